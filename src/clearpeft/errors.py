"""The one exception type the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a file, a name or a number that cannot be used.

    The message names the problem and, where there is one, the fix. The CLI prints it on one line and
    exits with code 2; library callers can catch it like any other exception.
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library errors run to pages), for a one-line UserError."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]
