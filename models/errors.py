"""Errors a user can act on. Each message is one sentence that says what is wrong and what to do."""


class SegueError(Exception):
    """Base of every error shown to the user as a single line (no traceback)."""


class ModelNotFoundError(SegueError):
    """The model reference names nothing segue can find (hub id, folder, or 'demo')."""


class ModelFileError(SegueError):
    """A model's files are missing, truncated or not in a layout segue reads."""


class OfflineError(SegueError):
    """Offline mode is on and the model is not in the local cache."""


class AudioInputError(SegueError):
    """An audio file or buffer that cannot be used as input."""


class RequestError(SegueError):
    """A generation request with values out of range."""
