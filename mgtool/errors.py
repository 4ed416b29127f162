"""The one exception type that the CLI turns into a one-line message."""


class MgtoolError(Exception):
    """A user-facing error: the message says what is wrong and what to do.

    The CLI prints it as one line on stderr and exits with code 1; any other
    exception is treated as a bug and reported as such.
    """


def first_line(error: BaseException, limit: int = 200) -> str:
    """An exception's first message line (its type name if it has none), for one-line errors."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__
