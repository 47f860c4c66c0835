"""Errors that are the user's to fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A mistake in the user's input (a path, a name, an argument). The message says what and how to fix it."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


class UnknownModelError(UserError, ValueError):
    """A model name that is not registered."""


class PretrainedUnavailableError(UserError, RuntimeError):
    """Pretrained weights that could not be fetched (offline, not cached, or no such release)."""


class WriteError(UserError):
    """An output that cannot be written (full disk, no permission, a file where a folder should be)."""
