"""Clients in other languages against a live mesh: the Node example's whole journey
(@grpc/grpc-js with the shipped descriptor set and service config), every command of
docs/grpcurl.md, and server reflection under both `v1` and `v1alpha`."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from sharemesh.client import Client
from sharemesh.launcher import LocalMesh
from sharemesh.v1 import share_service_pb2 as ss

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


async def test_the_node_example_runs_the_tenant_journey(mesh: LocalMesh, alpha: Client) -> None:
    env = {
        **os.environ,
        "SHAREMESH_ENDPOINT": mesh.api_address,
        "SHAREMESH_TOKEN": "alpha-key",
        "SHAREMESH_PROJECT": "alpha",
    }
    code, out = await _exec(["node", str(ROOT / "examples/node/journey.js"), "from-node"], env)
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.startswith("ok ")]
    assert lines[0] == "ok create: projects/alpha/shares/from-node ACTIVE 1 GiB", out
    assert lines[1] == "ok allow: 127.0.0.1/32 READ_WRITE ACTIVE", out
    assert re.fullmatch(r"ok show: 127\.0\.0\.1:/shares/\S+ nfs \d+ mount \d+", lines[2]), out
    assert lines[3] == "ok resize: 2 GiB", out
    assert lines[4] == "ok snapshot: projects/alpha/shares/from-node/snapshots/s1 READY", out
    # The rich error, decoded from grpc-status-details-bin.
    assert lines[5] == "ok error: INVALID_ARGUMENT INVALID_ARGUMENT sharemesh fields=share_id", out
    assert lines[6] == "ok delete: projects/alpha/shares/from-node", out
    # Progress came from the Operations' decoded metadata.
    assert re.search(r"^  create projects/alpha/shares/from-node: \d+% ", out, re.M), out
    listed = await alpha.call(
        alpha.shares.ListShares, ss.ListSharesRequest(parent="projects/alpha")
    )
    assert "projects/alpha/shares/from-node" not in [s.name for s in listed.shares]


def _sh_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```$", markdown, re.S | re.M)


async def test_every_command_of_docs_grpcurl_runs(mesh: LocalMesh, tmp_path: Path) -> None:
    blocks = _sh_blocks((ROOT / "docs/grpcurl.md").read_text())
    assert len(blocks) >= 10
    script = tmp_path / "grpcurl.sh"
    script.write_text("set -euo pipefail -x\n" + "\n".join(blocks))
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "API": mesh.api_address,
        "TOKEN": "alpha-key",
        "PROJECT": "alpha",
        "TMPDIR": str(tmp_path),
    }
    # Run from the checkout, where the protoset block finds gen/; error.json goes to tmp.
    code, out = await _exec(["bash", str(script)], env, cwd=ROOT, timeout=300)
    assert code == 0, out
    assert not (ROOT / "error.json").exists()


async def test_reflection_answers_as_v1_and_v1alpha(mesh: LocalMesh) -> None:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async with grpc.aio.insecure_channel(mesh.api_address) as channel:
        for version in ("v1", "v1alpha"):
            stream = channel.stream_stream(
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            call = stream(iter([request]))
            (response,) = [r async for r in call]
            services = {s.name for s in response.list_services_response.service}
            assert {
                "sharemesh.v1.ShareService",
                "google.longrunning.Operations",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            } <= services, version
            symbol = reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="grpc.reflection.v1.ServerReflection"
            )
            (described,) = [r async for r in stream(iter([symbol]))]
            assert described.file_descriptor_response.file_descriptor_proto, version


async def _exec(
    argv: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 180
) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode or 0, out.decode(errors="replace")
