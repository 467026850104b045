"""The one exception type users see: its message names the problem and the fix, on one line."""


class KdError(Exception):
    """A problem with the user's input or environment (not a bug in kdstream).

    The CLI prints ``error: <message>`` and exits with status 2, without a traceback.
    """


def run_main(main) -> None:
    """Run a script's ``main()`` and end as the kdstream CLI does: a KdError is one ``error: …``
    line on stderr and exit status 2, without a traceback (anything else keeps its traceback)."""
    import sys

    try:
        main()
    except KdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
