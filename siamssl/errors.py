"""Exceptions that end a run with one clear line instead of a traceback."""


class SiamSSLError(Exception):
    """Base class: the command-line entry points print ``error: <message>`` and exit non-zero."""


class ConfigError(SiamSSLError, ValueError):
    """A configuration key, value or combination is invalid."""


class DataError(SiamSSLError):
    """A dataset is missing, unreadable or malformed."""


class TrainingDiverged(SiamSSLError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class CorruptImageWarning(UserWarning):
    """A training image could not be read; the batch went on with another image in its place."""
