"""The one exception type users see, and the one-line form the CLI prints its messages in."""


class HiresError(Exception):
    """A problem with the user's input or request, reported without a traceback."""


def one_line(message) -> str:
    """A message (or an exception's) on one line: every run of whitespace becomes one space."""
    return " ".join(str(message).split())
