"""Mutual TLS inside the mesh: the scheduler, the driver-host, the gateway and etcd
refuse a plaintext client, a client with a certificate from another CA and a tenant's
API key; a mesh identity may call only what its role may; and a certificate is
rotated under a running mesh without restarting it."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import mtls_ops
import pytest
from cryptography import x509

from sharemesh.client import Client
from sharemesh.launcher import LocalMesh
from sharemesh.runtime import tls
from sharemesh.runtime.coordination import Store, connect, keys
from sharemesh.state.v1 import records_pb2

from mesh_ops import MESH_CONFIG, create_share, delete_share, running_mesh

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalMesh]:
    async with running_mesh(tmp_path_factory, MESH_CONFIG.format(capacity_gib=4)) as mesh:
        yield mesh


def _targets(mesh: LocalMesh) -> dict[str, tuple[str, mtls_ops.Call]]:
    assert mesh.config is not None and mesh.etcd is not None
    return {
        "scheduler": (mesh.config.scheduler.listen, mtls_ops.place),
        "driver-host": (mesh.config.backends[0].listen, mtls_ops.sync_share),
        "gateway": (mesh.config.gateway.listen, mtls_ops.sync_network),
        "etcd": (mesh.etcd.endpoint.split("://", 1)[1], mtls_ops.etcd_range),
    }


async def test_outsiders_are_refused_by_every_internal_server(
    mesh: LocalMesh, tmp_path: Path
) -> None:
    outsiders = mtls_ops.outsiders(tmp_path, Path(mesh.ca.cert_file))
    for target, (address, call) in _targets(mesh).items():
        # The server is up and answers the mesh's own callers...
        own = mesh.identity("api" if target != "etcd" else "operator")
        assert (
            await mtls_ops.answer(address, call, mtls_ops.credentials(own)) == grpc.StatusCode.OK
        ), target
        # ...and nobody else: the handshake fails before any method is reached.
        for who, (credentials, metadata) in outsiders.items():
            code = await mtls_ops.answer(address, call, credentials, metadata)
            assert code == grpc.StatusCode.UNAVAILABLE, (target, who, code)

    # The tenant's key still works where it belongs: the public API.
    async with Client(mesh.api_address, "alpha-key") as alpha:
        share = await create_share(alpha, "alpha", "through-the-front-door")
        await delete_share(alpha, share.name)


@pytest.mark.parametrize(
    ("caller", "target", "allowed"),
    [
        ("api", "scheduler", True),
        ("driver-host-local", "scheduler", True),
        ("gateway", "scheduler", False),
        ("scheduler", "scheduler", False),
        ("scheduler", "driver-host", True),
        ("gateway", "driver-host", False),
        ("driver-host-local", "driver-host", False),
        ("driver-host-local", "gateway", True),
        ("scheduler", "gateway", False),
        ("gateway", "gateway", False),
    ],
)
async def test_each_role_calls_only_what_it_may(
    mesh: LocalMesh, caller: str, target: str, allowed: bool
) -> None:
    address, call = _targets(mesh)[target]
    code = await mtls_ops.answer(address, call, mtls_ops.credentials(mesh.identity(caller)))
    assert code == (grpc.StatusCode.OK if allowed else grpc.StatusCode.PERMISSION_DENIED)


def _served_certificate(address: str, identity: tls.Identity) -> x509.Certificate:
    """The certificate a server presents now (a fresh handshake)."""
    context = ssl.create_default_context(cafile=identity.ca_file)
    context.load_cert_chain(identity.cert_file, identity.key_file)
    context.set_alpn_protocols(["h2"])
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as wrapped:
            der = wrapped.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _placements_served(mesh: LocalMesh) -> float:
    """PlaceShare calls the scheduler answered OK, from its metrics: the api's nudges."""
    with urllib.request.urlopen(mesh.metrics["scheduler"], timeout=10) as answer:  # noqa: S310
        text = answer.read().decode()
    pattern = re.compile(
        r'^sharemesh_rpc_server_requests_total\{(?=[^}]*code="OK")'
        r'(?=[^}]*method="sharemesh\.scheduler\.v1\.SchedulerService/PlaceShare")[^}]*\} (\S+)$',
        re.M,
    )
    return sum(float(value) for value in pattern.findall(text))


async def test_certificates_rotate_without_restarts(mesh: LocalMesh) -> None:
    assert mesh.config is not None
    pids = {name: child.pid for name, child in mesh.children.items()}
    exits = {name: list(child.exits) for name, child in mesh.children.items()}
    operator = mesh.identity("operator")
    scheduler = mesh.config.scheduler.listen
    before = _served_certificate(scheduler, operator)

    async with Client(mesh.api_address, "alpha-key") as alpha:
        first = await create_share(alpha, "alpha", "before-rotation")

        # Every certificate the create path uses: api -> scheduler -> driver-host.
        for name in ("api", "scheduler", "driver-host-local", "gateway"):
            mesh.rotate_certificate(name)
        rotated = x509.load_pem_x509_certificate(
            Path(mesh.identity("scheduler").cert_file).read_bytes()
        )
        assert rotated.serial_number != before.serial_number
        # The scheduler serves the new one from its next handshake on.
        served = await asyncio.to_thread(_served_certificate, scheduler, operator)
        assert served.serial_number == rotated.serial_number

        # And calls keep working: a create goes through every hop (the api's nudge to
        # the scheduler, the scheduler's to the driver-host) on the new certificates.
        placed = await asyncio.to_thread(_placements_served, mesh)
        second = await create_share(alpha, "alpha", "after-rotation")
        assert second.export_locations
        # The api's nudge reached the scheduler, over a channel with its new certificate.
        assert await asyncio.to_thread(_placements_served, mesh) == placed + 1
        await delete_share(alpha, first.name)
        await delete_share(alpha, second.name)

    # The old certificate is refused no more than before, the new one is accepted.
    address, call = _targets(mesh)["scheduler"]
    assert (
        await mtls_ops.answer(address, call, mtls_ops.credentials(mesh.identity("api")))
        == grpc.StatusCode.OK
    )
    # Nothing was restarted for it.
    assert {name: child.pid for name, child in mesh.children.items()} == pids
    assert {name: list(child.exits) for name, child in mesh.children.items()} == exits
    assert mesh.etcd is not None
    async with connect(mesh.etcd.endpoint) as client:
        store = Store(client)
        found = await store.get(keys.backend_key(store.root, "local"), records_pb2.BackendRecord)
        assert found is not None  # the driver-host kept its registration (its lease)
