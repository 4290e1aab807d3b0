"""Every reason the mesh reports is declared in `ErrorReason`, and the one table maps
each domain exception to its code with its reason."""

from __future__ import annotations

import ast
import logging
from dataclasses import fields
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

import sharemesh.ganesha._instance  # noqa: F401  (defines ExportRefused)
import sharemesh.runtime.commands  # noqa: F401  (defines CommandError)
from sharemesh.driver_host.drivers import Capabilities
from sharemesh.runtime import errors
from sharemesh.v1.error_reason_pb2 import ErrorReason

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["services", "libs", "deploy", "cli"]


def _subclasses(cls: type[errors.ShareMeshError]) -> list[type[errors.ShareMeshError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def _reason_literals() -> list[tuple[str, str]]:
    """(where, reason) for each `reason="..."` argument and `default_reason = "..."`
    in the source tree."""
    found = []
    for source in SOURCES:
        for path in sorted((ROOT / source).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                value = None
                if isinstance(node, ast.keyword) and node.arg == "reason":
                    value = node.value
                elif isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "default_reason" for t in node.targets
                ):
                    value = node.value
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno}", value.value))
    return found


def _error_info(error: BaseException) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo()
    assert errors.to_status(error).details[0].Unpack(info)
    return info


def test_the_source_tree_reports_reasons() -> None:
    # The walk below would pass vacuously if it found nothing.
    reasons = {reason for _, reason in _reason_literals()}
    assert {"POOL_FULL", "QUOTA_EXCEEDED", "NFS_SERVER_RESTARTING", "INTERNAL"} <= reasons


@pytest.mark.parametrize("where,reason", _reason_literals())
def test_every_reason_literal_is_declared(where: str, reason: str) -> None:
    assert reason in ErrorReason.keys(), f"{where}: {reason} is not in ErrorReason"


@pytest.mark.parametrize("cls", _subclasses(errors.ShareMeshError), ids=lambda c: c.__name__)
def test_every_exception_reports_a_declared_reason_under_its_code(
    cls: type[errors.ShareMeshError],
) -> None:
    assert cls.default_reason in errors.REASONS
    error = cls.__new__(cls)
    errors.ShareMeshError.__init__(error, "why")
    assert _error_info(error).reason == cls.default_reason
    assert errors.status_code_of(error) != grpc.StatusCode.UNKNOWN


def test_each_code_has_its_generic_reason() -> None:
    for cls, code in errors._STATUS_OF.items():
        assert cls.default_reason == code.name


def test_a_subclass_with_an_undeclared_reason_fails_at_import() -> None:
    with pytest.raises(TypeError, match="NOT_A_REASON"):

        class Typo(errors.Aborted):
            default_reason = "NOT_A_REASON"


def test_an_undeclared_reason_is_reported_as_its_codes_generic_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR):
        status = errors.to_status(errors.Aborted("lost a race", reason="NOT_A_REASON"))
    assert status.code == grpc.StatusCode.ABORTED.value[0]
    assert _error_info(errors.Aborted("x", reason="NOT_A_REASON")).reason == "ABORTED"
    assert "NOT_A_REASON" in caplog.text


@pytest.mark.parametrize(
    "error,code,reason",
    [
        (errors.PoolFull("pool p is full"), grpc.StatusCode.RESOURCE_EXHAUSTED, "POOL_FULL"),
        (errors.QuotaExceeded("over"), grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED"),
        (errors.ShareBusy("busy"), grpc.StatusCode.ABORTED, "SHARE_BUSY"),
        (errors.EtagMismatch("stale"), grpc.StatusCode.ABORTED, "ETAG_MISMATCH"),
        (
            errors.ShareNotActive("in ERROR"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "SHARE_NOT_ACTIVE",
        ),
        (errors.BackendUnavailable("down"), grpc.StatusCode.UNAVAILABLE, "BACKEND_DOWN"),
        (errors.NfsServerDown("down"), grpc.StatusCode.UNAVAILABLE, "NFS_SERVER_DOWN"),
        (
            errors.NfsServerRestarting("restarting"),
            grpc.StatusCode.UNAVAILABLE,
            "NFS_SERVER_RESTARTING",
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_domain_errors_map_to_their_code_and_reason(
    error: errors.ShareMeshError, code: grpc.StatusCode, reason: str
) -> None:
    status = errors.to_status(error)
    assert status.code == code.value[0]
    assert status.message == error.message
    assert _error_info(error).reason == reason
    back = errors.from_status(status)
    assert errors.status_code_of(back) == code
    assert back.reason == reason


@pytest.mark.parametrize(
    "capability", [f.name for f in fields(Capabilities) if f.name.endswith("_support")]
)
def test_every_unsupported_capability_has_a_declared_reason(capability: str) -> None:
    error = errors.CapabilityUnsupported(capability, f"the pool lacks {capability}")
    info = _error_info(error)
    assert info.reason in errors.REASONS
    assert info.reason == capability.removesuffix("_support").upper() + "_NOT_SUPPORTED"
    assert info.metadata["capability"] == capability
    assert errors.status_code_of(error) == grpc.StatusCode.FAILED_PRECONDITION
