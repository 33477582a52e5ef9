"""User-facing errors: the CLI prints their message on one line, with no traceback."""


class SkulensError(Exception):
    """A problem with the user's input or environment that they can fix."""


class ImageError(SkulensError):
    """An image that cannot be used: unreadable, truncated, too large, unsupported."""


class DatasetError(SkulensError):
    """A dataset path or layout that cannot be read."""


class CheckpointError(SkulensError):
    """A run folder that is missing, incomplete or inconsistent."""
