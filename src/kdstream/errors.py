"""The one exception type users see: its message names the problem and the fix, on one line."""


class KdError(Exception):
    """A problem with the user's input or environment (not a bug in kdstream).

    The CLI prints ``error: <message>`` and exits with status 2, without a traceback.
    """


def shown(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message echoes a user's value, never megabytes
    of it. A value read from JSON or YAML is shown as written there (true, null, "8")."""
    import json

    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run_main(main) -> None:
    """Run a script's ``main()`` and end as the kdstream CLI does: a KdError is one ``error: …``
    line on stderr and exit status 2, without a traceback (anything else keeps its traceback)."""
    import sys

    try:
        main()
    except KdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
