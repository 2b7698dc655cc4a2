"""The one exception type that means "the user can fix this": the CLI prints it as one line, exit 2."""


class UserError(Exception):
    """A mistake in the user's input (config, data, paths): what is wrong, where, and how to fix it."""
