"""The project's one exception hierarchy and its one table of gRPC status codes.

Servicers, drivers and the coordination layer raise these; the server interceptor and
the operation runner turn them into `google.rpc.Status` with an `ErrorInfo` (and a
`BadRequest` for field violations), so no handler maps errors by hand.

Each code has a class (`NotFound`, `Aborted`, ...); the common domain failures have
their own subclasses (`PoolFull`, `ShareBusy`, ...), as etcd's `rpctypes` names its
errors. Every reason, given or default, is a member of the public `ErrorReason` enum
(protos/sharemesh/v1/error_reason.proto), so clients can branch on it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from sharemesh.v1.error_reason_pb2 import ErrorReason

DOMAIN = "sharemesh"

# The reasons a caller may be told: the names of `ErrorReason`, but its zero value.
REASONS = frozenset(ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}

_log = logging.getLogger(__name__)


class ShareMeshError(Exception):
    """Base of every error the mesh reports to a caller.

    `reason` is a stable UPPER_SNAKE identifier for machines (AIP-193); the message is
    for people.
    """

    default_reason = "INTERNAL"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.default_reason not in REASONS:  # a typo fails at import, not in a call
            raise TypeError(f"{cls.__name__}.default_reason {cls.default_reason} is no ErrorReason")

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        field_violations: Iterable[tuple[str, str]] = (),
        quota_violations: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations)
        # (subject, description) pairs, as in `google.rpc.QuotaFailure`.
        self.quota_violations = list(quota_violations)


class InvalidArgument(ShareMeshError):
    """The request is malformed; `field_violations` names the fields."""

    default_reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, description: str, **kwargs: object) -> None:
        super().__init__(
            f"{field}: {description}",
            field_violations=[(field, description)],
            **kwargs,  # type: ignore[arg-type]
        )


class NotFound(ShareMeshError):
    default_reason = "NOT_FOUND"


class AlreadyExists(ShareMeshError):
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(ShareMeshError):
    default_reason = "FAILED_PRECONDITION"


class Aborted(ShareMeshError):
    """A compare failed: stale etag, lost race, or a busy resource. Retry after a re-read."""

    default_reason = "ABORTED"


class Unauthenticated(ShareMeshError):
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(ShareMeshError):
    default_reason = "PERMISSION_DENIED"


class ResourceExhausted(ShareMeshError):
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(ShareMeshError):
    default_reason = "UNAVAILABLE"


class FencedOut(Aborted):
    """A write made under a lock or leadership that this process no longer holds."""

    default_reason = "FENCED_OUT"


class Internal(ShareMeshError):
    default_reason = "INTERNAL"


class Unimplemented(ShareMeshError):
    """A method this version does not offer yet."""

    default_reason = "UNIMPLEMENTED"


# The common domain failures. Each is its code's class, so the table below maps it.


class PoolFull(ResourceExhausted):
    """The share's pool cannot allocate the size asked for."""

    default_reason = "POOL_FULL"


class QuotaExceeded(ResourceExhausted):
    """The project's quota cannot hold the request; `quota_violations` names it."""

    default_reason = "QUOTA_EXCEEDED"


class ShareBusy(Aborted):
    """Another call holds the share's lock; the caller retries later, as CSI's
    TryAcquire answers ABORTED for a volume with an operation in flight."""

    default_reason = "SHARE_BUSY"


class EtagMismatch(Aborted):
    """The request's etag is stale: the resource changed since it was read (AIP-154)."""

    default_reason = "ETAG_MISMATCH"


class ShareNotActive(FailedPrecondition):
    """The call needs an ACTIVE share."""

    default_reason = "SHARE_NOT_ACTIVE"


class CapabilityUnsupported(FailedPrecondition):
    """The pool's capabilities do not offer the operation; `metadata["capability"]`
    names the capability, and the reason is `<CAPABILITY>_NOT_SUPPORTED`, e.g.
    SHRINK_NOT_SUPPORTED for `shrink_support`."""

    default_reason = "FAILED_PRECONDITION"

    def __init__(self, capability: str, message: str) -> None:
        super().__init__(
            message,
            reason=f"{capability.removesuffix('_support').upper()}_NOT_SUPPORTED",
            metadata={"capability": capability},
        )


class BackendUnavailable(Unavailable):
    """The share's backend (its driver-host) is not reachable now; it heals."""

    default_reason = "BACKEND_DOWN"


class NfsServerDown(Unavailable):
    """The NFS server did not start; the mesh retries it."""

    default_reason = "NFS_SERVER_DOWN"


class NfsServerRestarting(Unavailable):
    """The NFS server is restarting; a retry shortly succeeds."""

    default_reason = "NFS_SERVER_RESTARTING"


# The one table. Subclasses resolve through the MRO, so FencedOut maps as Aborted.
_STATUS_OF: dict[type[ShareMeshError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Aborted: grpc.StatusCode.ABORTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Internal: grpc.StatusCode.INTERNAL,
    Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
}

_ERROR_OF_CODE: dict[grpc.StatusCode, type[ShareMeshError]] = {
    code: cls for cls, code in _STATUS_OF.items()
}


def status_code_of(error: BaseException) -> grpc.StatusCode:
    """The gRPC code for any exception; anything not ours is INTERNAL."""
    if isinstance(error, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED
    if isinstance(error, ShareMeshError):
        for cls in type(error).__mro__:
            if cls in _STATUS_OF:
                return _STATUS_OF[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


def declared_reason(reason: str, code: grpc.StatusCode) -> str:
    """`reason` if `ErrorReason` declares it, else the generic reason of `code`: a
    caller is never told a reason it cannot look up (tests/unit/test_errors.py keeps
    every reason in the tree declared; this is the net for one that slips through)."""
    if reason in REASONS:
        return reason
    _log.error("error reason %r is not in ErrorReason; reporting %s", reason, code.name)
    return _ERROR_OF_CODE.get(code, Internal).default_reason


def to_status(error: BaseException) -> status_pb2.Status:
    """A rich `google.rpc.Status` for an exception, with ErrorInfo and BadRequest."""
    code = status_code_of(error)
    quotas: list[tuple[str, str]] = []
    if isinstance(error, ShareMeshError):
        message, metadata = error.message, error.metadata
        reason = declared_reason(error.reason, code)
        violations, quotas = error.field_violations, error.quota_violations
    elif isinstance(error, NotImplementedError):
        message, reason, metadata, violations = "not implemented yet", "UNIMPLEMENTED", {}, []
    else:
        message, reason, metadata, violations = "internal error", "INTERNAL", {}, []
    status = status_pb2.Status(code=code.value[0], message=message)
    _add_detail(
        status, error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)
    )
    if violations:
        _add_detail(
            status,
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in violations
                ]
            ),
        )
    if quotas:
        _add_detail(
            status,
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(subject=s, description=d)
                    for s, d in quotas
                ]
            ),
        )
    return status


def _add_detail(status: status_pb2.Status, detail: Message) -> None:
    packed = any_pb2.Any()
    packed.Pack(detail)
    status.details.append(packed)


def from_status(status: status_pb2.Status) -> ShareMeshError:
    """The exception a `google.rpc.Status` stands for (e.g. a failed Operation's error)."""
    code = next((c for c in grpc.StatusCode if c.value[0] == status.code), None)
    cls = _ERROR_OF_CODE.get(code, Internal) if code else Internal  # type: ignore[arg-type]
    reason = None
    violations: list[tuple[str, str]] = []
    quotas: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            quotas = [(v.subject, v.description) for v in failure.violations]
    error = ShareMeshError.__new__(cls)
    ShareMeshError.__init__(
        error,
        status.message,
        reason=reason,
        field_violations=violations,
        quota_violations=quotas,
    )
    return error


def from_rpc_error(error: grpc.aio.AioRpcError) -> ShareMeshError:
    """The exception behind a failed call to another sharemesh service."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return from_status(status_pb2.Status.FromString(value))
    cls = _ERROR_OF_CODE.get(error.code(), Unavailable)
    message = error.details() or error.code().name
    if cls is InvalidArgument:
        return InvalidArgument("request", message)
    return cls(message)


# Host paths (`/var/lib/…`, `/tmp/…`) and etcd keys are for operators' logs, never for
# tenants; `/shares/<uid>` pseudo paths are what tenants mount, so they stay.
# A name pattern's `{project}/shares/{share}` is neither.
_HOST_PATH = re.compile(r"(?<![\w:.\-}])/(?!shares/[0-9a-f]+\b)(?!\{)[^\s'\",;:)\]}]+")


def redact(text: str) -> str:
    """`text` without host paths or etcd keys, for messages a tenant can read."""
    return _HOST_PATH.sub("<internal path>", text)


def public_message(error: BaseException, reference: str = "") -> str:
    """What a tenant may read about `error`: our own errors' messages without host paths
    or keys; for anything unexpected, a generic line. `reference` (an operation name)
    ties it to the operator's log, which has the detail."""
    if isinstance(error, ShareMeshError) and not isinstance(error, Internal):
        return redact(error.message)
    where = f" (see the service log for {reference})" if reference else ""
    return f"the backend failed unexpectedly{where}"


# ErrorInfo metadata that locates things inside the mesh (the Store's failed compares
# name etcd keys, locks name their prefix): for the operator, never for a tenant.
_INTERNAL_METADATA = frozenset({"key", "lock"})


def _public_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    return {k: redact(v) for k, v in metadata.items() if k not in _INTERNAL_METADATA}


def for_tenant(error: ShareMeshError, reference: str, log: logging.Logger) -> ShareMeshError:
    """`error` as it may be recorded where a tenant reads it (a state_message, an
    Operation's error): the same code, reason and quota details, a message of
    `public_message`; the whole detail goes to `log` at WARNING under `reference` (the
    share or operation it concerns), where an operator finds it."""
    log.warning("%s: %s", reference, error.message)
    safe = ShareMeshError.__new__(type(error))
    ShareMeshError.__init__(
        safe,
        public_message(error, reference),
        reason=error.reason,
        metadata=_public_metadata(error.metadata),
        field_violations=[(field, redact(text)) for field, text in error.field_violations],
        quota_violations=error.quota_violations,
    )
    return safe


def public_status(status: status_pb2.Status, reference: str = "") -> status_pb2.Status:
    """`status` as a tenant may read it: the message of `public_message`, and no host
    paths or etcd keys in its details."""
    public = status_pb2.Status(
        code=status.code, message=public_message(from_status(status), reference)
    )
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            public_metadata = _public_metadata(info.metadata)
            info.metadata.clear()
            info.metadata.update(public_metadata)
            _add_detail(public, info)
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            for violation in bad.field_violations:
                violation.description = redact(violation.description)
            _add_detail(public, bad)
        else:
            public.details.append(packed)
    return public
