"""An etcd outage is a transient fault: the services ride it out without crashing, and a
mesh stopped while etcd is dead releases everything, gateways and share servers too.

While etcd is away a service keeps serving and retries; if the outage outlasts its lease
it exits with the lease-lost code (3) and restarts clean, waiting for etcd instead of
dying for it. No service exits with another code or logs a traceback for the outage."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_faults import _done, _hold_port, _persist, _serves

from sharemesh import network
from sharemesh.client import Client
from sharemesh.launcher import LocalMesh
from sharemesh.runtime.coordination import Store, connect, keys
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_network_service_pb2 as sns
from sharemesh.v1 import share_service_pb2 as ss
from sharemesh.v1 import share_type_pb2, share_type_service_pb2_grpc
from sharemesh.v1 import share_type_service_pb2 as sts

from mesh_ops import (
    NETWORK_BACKENDS,
    NETWORK_TYPES,
    RW,
    TENANT_KEYS,
    Share,
    create_network,
    grant,
    running_mesh,
)
from support import assert_host_clean, ensure_rpcbind, pid_alive, processes_mentioning

pytestmark = pytest.mark.e2e

LEASE_TTL = 3
SERVICES = ("driver-host-local", "driver-host-servers", "scheduler", "gateway")
CONFIG = (
    "reconcile_interval_seconds = 2\nretry_deadline_seconds = 180\n"
    + NETWORK_BACKENDS
    + TENANT_KEYS
)


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalMesh]:
    async with running_mesh(tmp_path_factory, CONFIG) as mesh:
        yield mesh


async def _networked_shares(mesh: LocalMesh) -> tuple[list[Share], str]:
    """A tenant network with a share through this host's gateway and one through a
    share server: both kinds of network server run. Returns the shares and the
    network's uid."""
    async with Client(mesh.api_address, mesh.admin_token) as admin:
        stub = share_type_service_pb2_grpc.ShareTypeServiceStub(admin._channel)
        for type_id, spec in NETWORK_TYPES.items():
            await stub.CreateShareType(
                sts.CreateShareTypeRequest(
                    share_type_id=type_id,
                    share_type=share_type_pb2.ShareType(
                        extra_specs={"driver_handles_share_servers": spec}
                    ),
                ),
                metadata=admin.metadata,
            )
    shares = []
    async with Client(mesh.api_address, "alpha-key") as alpha:
        net = await create_network(alpha, "outage-net")
        for type_id in NETWORK_TYPES:
            op = await alpha.call(
                alpha.shares.CreateShare,
                ss.CreateShareRequest(
                    parent="projects/alpha",
                    share_id=type_id,
                    share=Share(size_gib=1, share_network=net, share_type=f"shareTypes/{type_id}"),
                ),
            )
            share = await alpha.wait(op, Share)
            assert share.state == Share.ACTIVE, share.state_message
            await grant(alpha, share.name, "10.31.0.10", RW)
            shares.append(share)
        uid = (
            await alpha.call(alpha.networks.GetShareNetwork, sns.GetShareNetworkRequest(name=net))
        ).uid
    return shares, uid


def _server_namespaces(state: Path) -> list[str]:
    """The namespaces of the gateway's and the share servers' network servers."""
    dirs = [state / "gateway", state / "pools" / "servers" / "servers"]
    return [d.name for parent in dirs for d in parent.glob("sm-*")]


def _log_offsets(mesh: LocalMesh) -> dict[str, int]:
    return {name: (mesh.state_dir / "logs" / f"{name}.log").stat().st_size for name in SERVICES}


def _tracebacks(mesh: LocalMesh, since: dict[str, int]) -> dict[str, list[str]]:
    """Per service, the log lines written since `since` that carry a traceback."""
    found = {}
    for name, offset in since.items():
        with open(mesh.state_dir / "logs" / f"{name}.log", "rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
        found[name] = [line[:300] for line in lines if "Traceback" in line]
    return found


async def _registered(mesh: LocalMesh) -> bool:
    """Every backend and this host's gateway are registered again."""
    assert mesh.etcd is not None
    with_etcd = connect(mesh.etcd.endpoint, timeout=2)
    try:
        async with with_etcd as client:
            store = Store(client)
            backends = [
                await store.get(keys.backend_key(store.root, b), records_pb2.BackendRecord)
                for b in ("local", "servers")
            ]
            host = await store.get(
                keys.host_key(store.root, mesh.config.gateway.host),  # type: ignore[union-attr]
                records_pb2.HostRecord,
            )
    except Exception:  # noqa: BLE001 - etcd not back yet
        return False
    return all(backends) and host is not None


async def test_services_ride_out_an_etcd_outage(mesh: LocalMesh, tmp_path: Path) -> None:
    shares, _ = await _networked_shares(mesh)
    assert mesh.etcd is not None and mesh.etcd.pid and mesh.etcd.client_port
    pids = {name: mesh.children[name].pid for name in SERVICES}
    since = _log_offsets(mesh)
    os.kill(mesh.etcd.pid, signal.SIGKILL)
    holder = _hold_port(mesh.etcd.client_port)
    async with Client(mesh.api_address, "alpha-key") as alpha:
        try:
            # Asked during the outage (acknowledged once the api reaches etcd again).
            request = ss.CreateShareRequest(
                parent="projects/alpha",
                share_id="during-outage",
                share=Share(size_gib=1),
                request_id=str(uuid.uuid4()),
            )
            created = asyncio.create_task(
                _persist(lambda: alpha.call(alpha.shares.CreateShare, request, timeout=10))
            )
            await asyncio.sleep(2 * LEASE_TTL + 1)  # past every lease
        finally:
            holder.close()
        share = await _done(alpha, await created, Share)
        assert isinstance(share, Share) and share.state == Share.ACTIVE
        async with asyncio.timeout(60):
            while not await _registered(mesh):
                await asyncio.sleep(0.5)
        await grant(alpha, share.name, "127.0.0.1", RW)
        await _serves(alpha, share, tmp_path)
        for networked in shares:  # still ACTIVE after the outage
            now = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=networked.name))
            assert now.state == Share.ACTIVE, now.state_message

    for name in SERVICES:
        child = mesh.children[name]
        # Either it rode the outage out, or its lease ran out and it started over clean.
        assert all(code == 3 for code in child.exits), (name, child.exits)
        assert (child.pid == pids[name]) == (not child.exits), (name, child.exits)
        assert child.pid and pid_alive(child.pid)
    assert _tracebacks(mesh, since) == {name: [] for name in SERVICES}


async def test_a_mesh_stopped_with_etcd_and_servers_dead_leaves_nothing(tmp_path: Path) -> None:
    """etcd is dead and stays dead; the gateway and the share servers' driver-host are
    killed -9, so their restarts wait for etcd. Stopping the mesh still stops every
    network server's Ganesha and D-Bus daemon and removes its namespace and bridge."""
    ensure_rpcbind()
    state = tmp_path / "state"
    config = tmp_path / "mesh.toml"
    config.write_text(CONFIG)
    holder = None
    try:
        async with LocalMesh(state, config, api_port=0, lease_ttl_seconds=LEASE_TTL) as mesh:
            _, uid = await _networked_shares(mesh)
            namespaces = _server_namespaces(state)
            assert len(namespaces) == 2, namespaces
            assert mesh.etcd is not None and mesh.etcd.pid and mesh.etcd.client_port
            os.kill(mesh.etcd.pid, signal.SIGKILL)
            holder = _hold_port(mesh.etcd.client_port)
            for name in ("gateway", "driver-host-servers"):
                pid = mesh.children[name].pid
                assert pid
                os.kill(pid, signal.SIGKILL)
            async with asyncio.timeout(30):  # restarted, and waiting for etcd
                while any(mesh.children[n].exits == [] for n in ("gateway", "driver-host-servers")):
                    await asyncio.sleep(0.2)
            await asyncio.sleep(2)
            assert processes_mentioning(str(state / "gateway"))  # still serving meanwhile
        assert_host_clean(state)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not [n for n in namespaces if n in listed], listed
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert network.bridge_name(uid) not in links
    finally:
        if holder is not None:
            holder.close()
