"""The exception types the CLI prints as one line: a user's mistake (exit 2), a lost worker (exit 1).

`first_line` quotes another error inside such a line.
"""


class UserError(Exception):
    """A mistake in the user's input (config, data, paths): what is wrong, where, and how to fix it."""


class WorkerLost(Exception):
    """A worker of a multi-worker run stopped mid-training; the message says how to resume."""


class WorkersDisagree(UserError):
    """The workers of a multi-worker run would train different models: other code, data or checkpoint."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name if it has none), to quote in a one-line message."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
