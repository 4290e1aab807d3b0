"""Recording a failure where a tenant reads it (a state_message, an Operation's error):
the tenant gets what went wrong without host paths, keys or tracebacks, and the
operator's log gets the whole detail under the same reference."""

from __future__ import annotations

import logging

from .errors import ShareMeshError, public_message, redact


def for_tenant(error: ShareMeshError, reference: str, log: logging.Logger) -> ShareMeshError:
    """Logs `error` in full at WARNING under `reference` (the share or operation it
    concerns) and returns it as a tenant may read it: the same code and reason, a
    redacted message that points to the log where it had to hide the detail."""
    log.warning("%s: %s", reference, error.message)
    safe = ShareMeshError.__new__(type(error))
    ShareMeshError.__init__(
        safe,
        public_message(error, reference),
        reason=error.reason,
        field_violations=[(field, redact(text)) for field, text in error.field_violations],
    )
    return safe
