"""The one exception type users see: its message names the problem and the fix, on one line."""


class KdError(Exception):
    """A problem with the user's input or environment (not a bug in kdstream).

    The CLI prints ``error: <message>`` and exits with status 2, without a traceback.
    """
