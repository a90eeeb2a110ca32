"""Typed errors. Each maps to one clear message (CLI) or one HTTP status (services).

`http_status` is the one error -> status mapping of every API: `services.answers.respond`
answers an error raised while serving with the status named here (and the error body every
service uses); anything not named is a 500.
"""

from __future__ import annotations

from http import HTTPStatus


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


class ModelNotReady(RecsysError):
    """The service's model is still loading, or failed to load: 503, retry later."""


# The HTTP answer to each error a served request may raise on purpose. Looked up along the
# error's class hierarchy, so a subclass gets its parent's status unless it has its own.
HTTP_STATUS: dict[type[BaseException], HTTPStatus] = {
    ModelNotReady: HTTPStatus.SERVICE_UNAVAILABLE,
}


def http_status(exc: BaseException) -> HTTPStatus:
    """The status an API answers `exc` with: from `HTTP_STATUS`, else 500."""
    for kind in type(exc).__mro__:
        if kind in HTTP_STATUS:
            return HTTP_STATUS[kind]
    return HTTPStatus.INTERNAL_SERVER_ERROR
