"""The one exception type that the CLI turns into a one-line message."""


class MgtoolError(Exception):
    """A user-facing error: the message says what is wrong and what to do.

    The CLI prints it as one line on stderr and exits with code 1; any other
    exception is treated as a bug and reported as such.
    """
