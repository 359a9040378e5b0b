"""The engine's own typed errors: a question it cannot answer, and why.

Like every ``BirdsearchError`` each has a stable ``code`` and the HTTP status the query service
answers it with (``birdsearch.service.errors`` maps them); the Python API raises them as they are.
"""

from __future__ import annotations

from birdsearch.errors import BirdsearchError


class BadParameterError(BirdsearchError):
    """A request parameter is out of range or names something that does not exist."""

    code = "bad_parameter"
    http_status = 422


class NotReadyError(BirdsearchError):
    """The service is up but cannot answer queries yet (no index published, or one failed to load)."""

    code = "not_ready"
    http_status = 503


class ModeUnavailableError(BirdsearchError):
    """A query mode this server has no model for."""

    code = "mode_unavailable"
    http_status = 422
