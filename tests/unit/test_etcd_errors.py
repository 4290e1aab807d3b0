"""How a failed etcd call reads to the mesh: a broken connection to a member (one that
restarts) is UNAVAILABLE, to be retried, whatever code gRPC gave it; etcd's own refusals
keep their meaning."""

from __future__ import annotations

import grpc
import pytest

from sharemesh.runtime.coordination._client import Compacted, map_rpc_error
from sharemesh.runtime.errors import Internal, Unavailable


def failed(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
        (grpc.StatusCode.UNKNOWN, "No status received"),
        (
            grpc.StatusCode.INTERNAL,
            "Stream removed (Data frame with END_STREAM flag received) "
            "(RST_STREAM (Received RST_STREAM with error code 0))",
        ),
    ],
)
def test_a_broken_call_is_unavailable(code: grpc.StatusCode, details: str) -> None:
    assert isinstance(map_rpc_error(failed(code, details)), Unavailable)


def test_etcd_answers_keep_their_meaning() -> None:
    compacted = failed(
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"
    )
    assert isinstance(map_rpc_error(compacted), Compacted)
    refused = failed(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: too many operations in txn")
    assert isinstance(map_rpc_error(refused), Internal)
    corrupt = failed(grpc.StatusCode.INTERNAL, "etcdserver: corrupt cluster")
    assert isinstance(map_rpc_error(corrupt), Internal)
