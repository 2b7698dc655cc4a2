"""The exception types the CLI prints as one line: a user's mistake (exit 2), a lost worker (exit 1)."""


class UserError(Exception):
    """A mistake in the user's input (config, data, paths): what is wrong, where, and how to fix it."""


class WorkerLost(Exception):
    """A worker of a multi-worker run stopped mid-training; the message says how to resume."""


class WorkersDisagree(UserError):
    """The workers of a multi-worker run would train different models: other code, data or checkpoint."""
