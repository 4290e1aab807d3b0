"""Watches do the work: with the reconcile interval at 300 s, a create, a rule change,
an attachment and a network's delete whose nudges are lost (the nudges point at an
address where nothing listens) are still done within a few seconds, through the
services' watches."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sharemesh.client import Client
from sharemesh.launcher import LocalMesh
from sharemesh.runtime.coordination import _client, connect, keys
from sharemesh.runtime.coordination._store import DEFAULT_ROOT, encode
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import access_rule_pb2, share_pb2
from sharemesh.v1 import share_network_service_pb2 as sns

from mesh_ops import (
    MESH_CONFIG,
    attach,
    create_network,
    create_share,
    delete_share,
    grant,
    read,
    write,
)
from support import assert_host_clean, ensure_rpcbind, guest_namespaces, run

Share = share_pb2.Share
AccessRule = access_rule_pb2.AccessRule
NOWHERE = b"127.0.0.1:1"  # nothing listens there: a call is refused at once
SLOW = MESH_CONFIG.replace("reconcile_interval_seconds = 2", "reconcile_interval_seconds = 300")


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalMesh]:
    assert "reconcile_interval_seconds = 300" in SLOW
    ensure_rpcbind()
    state = tmp_path_factory.mktemp("mesh")
    config = state / "mesh.toml"
    config.write_text(SLOW.format(capacity_gib=8))
    async with LocalMesh(state, config, api_port=0, lease_ttl_seconds=3) as running:
        yield running
    assert_host_clean(state)


@contextlib.asynccontextmanager
async def _nudges_lost(
    mesh: LocalMesh, *targets: str, nowhere: bytes = NOWHERE
) -> AsyncIterator[None]:
    """Points the endpoints that nudges look up (the scheduler leader's election value,
    the backend's registration) at NOWHERE, keeping their keys, revisions and leases:
    the services keep running, leading and registered, but no nudge reaches them."""
    assert mesh.etcd is not None
    async with connect(mesh.etcd.endpoint) as client:
        saved = []
        for prefix in targets:
            response = await client.get_prefix(prefix.encode())
            kvs = sorted(response, key=lambda kv: kv.create_revision)
            assert kvs, f"nothing registered under {prefix}"
            saved.append(kvs[0])
        for kv in saved:
            await _client.txn(client, [], [_client.op_put(kv.key, nowhere, kv.lease)])
        try:
            yield
        finally:
            for kv in saved:
                await _client.txn(client, [], [_client.op_put(kv.key, kv.value, kv.lease)])


def _election(root: str = DEFAULT_ROOT) -> str:
    return keys.election_prefix(root, "scheduler") + "/"


def _backend(root: str = DEFAULT_ROOT) -> str:
    return keys.backend_key(root, "local")


@contextlib.contextmanager
def _within(seconds: float) -> Iterator[None]:
    started = time.monotonic()
    yield
    took = time.monotonic() - started
    assert took < seconds, f"took {took:.1f}s: not the watch (the reconcile runs every 300 s)"


async def test_a_create_whose_nudge_is_lost_is_placed_and_realized_by_the_watch(
    mesh: LocalMesh, tmp_path: Path
) -> None:
    async with Client(mesh.api_address, "alpha-key") as alpha:
        async with _nudges_lost(mesh, _election()):
            with _within(5):
                share = await create_share(alpha, "alpha", "watched")
        assert share.state == Share.ACTIVE and share.export_locations
        # Realized for real: bytes go in and come out through its export.
        await grant(alpha, share.name, "127.0.0.1")
        payload = tmp_path / "payload"
        payload.write_bytes(b"through the watch\n" * 1000)
        code, out = await write(share, payload, "file")
        assert code == 0, out
        code, out = await read(share, tmp_path / "back", "file")
        assert code == 0, out
        assert (tmp_path / "back").read_bytes() == payload.read_bytes()
        await delete_share(alpha, share.name)


async def test_a_rule_whose_nudge_is_lost_is_applied_by_the_watch(
    mesh: LocalMesh, tmp_path: Path
) -> None:
    async with Client(mesh.api_address, "alpha-key") as alpha:
        share = await create_share(alpha, "alpha", "ruled")
        async with _nudges_lost(mesh, _backend()):
            with _within(5):
                rule = await grant(alpha, share.name, "127.0.0.1")
        assert rule.state == AccessRule.ACTIVE
        payload = tmp_path / "payload"
        payload.write_bytes(b"granted through the watch\n")
        code, out = await write(share, payload, "file")
        assert code == 0, out
        with _within(5):
            async with _nudges_lost(mesh, _backend()):
                await delete_share(alpha, share.name)


def _gateway(root: str = DEFAULT_ROOT) -> str:
    return keys.host_key(root, "localhost")


async def test_an_attachment_and_a_network_delete_whose_nudges_are_lost_are_done_by_the_watch(
    mesh: LocalMesh,
) -> None:
    async with (
        Client(mesh.api_address, "alpha-key") as alpha,
        Client(mesh.api_address, mesh.admin_token) as admin,
    ):
        network = await create_network(alpha, "watched-net")
        with guest_namespaces("watched") as guests:
            # A gateway's registration is a record: its endpoint points nowhere.
            nowhere = encode(records_pb2.HostRecord(name="localhost", endpoint=NOWHERE.decode()))
            async with _nudges_lost(mesh, _gateway(), nowhere=nowhere):
                with _within(5):
                    await attach(admin, network, guests["watched"], "10.31.0.40")
                code, links = await run("ip", "-n", guests["watched"], "-br", "addr")
                assert "10.31.0.40/24" in links, links  # plugged in for real
                with _within(5):
                    op = await admin.call(
                        admin.networks.DeleteAttachment,
                        sns.DeleteAttachmentRequest(
                            name=f"{network}/attachments/{guests['watched']}"
                        ),
                    )
                    await admin.wait(op)
                    op = await alpha.call(
                        alpha.networks.DeleteShareNetwork,
                        sns.DeleteShareNetworkRequest(name=network),
                    )
                    await alpha.wait(op)
