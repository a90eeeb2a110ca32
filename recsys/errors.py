"""Typed errors. Each maps to one clear message (CLI) or one HTTP status (services)."""


class RecsysError(Exception):
    """Base class for every error the project raises on purpose."""


class DataError(RecsysError):
    """Input data cannot be read or has the wrong shape."""


class DataValidationError(DataError):
    """Too many rows were rejected by validation."""


class ConfigError(RecsysError):
    """A configuration or SLO file is invalid."""


class ModelMissingError(RecsysError):
    """A model artifact does not exist in the store."""


class ModelCorruptError(RecsysError):
    """A model artifact exists but its files are missing, altered or unreadable."""


class StackNotReadyError(RecsysError):
    """A server of the local stack exited or never became ready; the message says which and why."""


class InvalidRequest(RecsysError):
    """A request is well formed JSON but asks for something impossible."""
