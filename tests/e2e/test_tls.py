"""The public API over TLS when a certificate is configured: a client that trusts it
works, a plaintext one cannot talk to it."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from sharemesh.client import Client
from sharemesh.launcher import LocalMesh
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import TENANT_KEYS, create_share, delete_share, running_mesh

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made for this test."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "api.pem", where / "api.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
async def mesh(
    tmp_path_factory: pytest.TempPathFactory, certificate: tuple[Path, Path]
) -> AsyncIterator[LocalMesh]:
    cert, key = certificate
    config = (
        f"""
[api]
tls_cert_file = "{cert}"
tls_key_file = "{key}"
[[backends]]
name = "local"
[backends.options]
capacity_gib = 2
"""
        + TENANT_KEYS
    )
    async with running_mesh(tmp_path_factory, config) as mesh:
        yield mesh


async def test_tls_clients_work_and_plaintext_ones_do_not(
    mesh: LocalMesh, certificate: tuple[Path, Path]
) -> None:
    async with Client(mesh.api_address, "alpha-key", ca_file=str(certificate[0])) as tls:
        share = await create_share(tls, "alpha", "private")
        await delete_share(tls, share.name)
    async with Client(mesh.api_address, "alpha-key") as plaintext:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await plaintext.call(
                plaintext.shares.ListShares,
                ss.ListSharesRequest(parent="projects/alpha"),
                timeout=5,
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
