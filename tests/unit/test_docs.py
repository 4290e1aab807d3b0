"""What clients in other languages read must match the protos: docs/api.md is what
scripts/gen-api-doc writes, the shipped descriptor set holds every public service with
its imports, and the shipped gRPC service config retries exactly the calls a retry
cannot make act twice."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import types
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool

ROOT = Path(__file__).resolve().parents[2]
SERVICE_CONFIG = ROOT / "examples" / "grpc_service_config.json"


def _gen_api_doc() -> types.ModuleType:
    loader = importlib.machinery.SourceFileLoader(
        "gen_api_doc", str(ROOT / "scripts" / "gen-api-doc")
    )
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _public_services() -> list[descriptor_pb2.ServiceDescriptorProto]:
    gen = _gen_api_doc()
    fds = descriptor_pb2.FileDescriptorSet.FromString(gen.DESCRIPTORS.read_bytes())
    return [s for f in fds.file if f.name.startswith("sharemesh/v1/") for s in f.service]


def test_api_reference_is_current() -> None:
    gen = _gen_api_doc()
    assert (ROOT / "docs" / "api.md").read_text() == gen.render(), (
        "docs/api.md is stale: run scripts/gen-api-doc"
    )


def test_the_descriptor_set_stands_alone_with_every_public_service() -> None:
    """A client loads it into an empty pool: every import is inside it."""
    gen = _gen_api_doc()
    fds = descriptor_pb2.FileDescriptorSet.FromString(gen.DESCRIPTORS.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in fds.file:  # protoc writes dependencies first
        pool.Add(file)
    for name in (
        "sharemesh.v1.ShareService",
        "sharemesh.v1.ShareNetworkService",
        "sharemesh.v1.ShareTypeService",
        "google.longrunning.Operations",
    ):
        assert pool.FindServiceByName(name)
    assert pool.FindMessageTypeByName("google.rpc.ErrorInfo")
    assert pool.FindMessageTypeByName("sharemesh.v1.OperationMetadata")


def test_the_service_config_retries_reads_and_mutations_with_a_request_id_only() -> None:
    config = json.loads(SERVICE_CONFIG.read_text())
    retried = {
        (n["service"], n["method"])
        for entry in config["methodConfig"]
        if entry.get("retryPolicy")
        for n in entry["name"]
    }
    for entry in config["methodConfig"]:
        assert entry["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    pool = descriptor_pool.Default()
    import sharemesh.v1.pool_service_pb2  # noqa: F401
    import sharemesh.v1.project_service_pb2  # noqa: F401  (registers the services)
    import sharemesh.v1.share_network_service_pb2  # noqa: F401
    import sharemesh.v1.share_service_pb2  # noqa: F401
    import sharemesh.v1.share_type_service_pb2  # noqa: F401

    expected = {
        ("google.longrunning.Operations", m)
        for m in ("GetOperation", "ListOperations", "WaitOperation")
    }
    for service in _public_services():
        for method in service.method:
            request = pool.FindMessageTypeByName(method.input_type.lstrip("."))
            read = method.name.startswith(("Get", "List"))
            if read or "request_id" in request.fields_by_name:
                expected.add((f"sharemesh.v1.{service.name}", method.name))
    assert retried == expected
