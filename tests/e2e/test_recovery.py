"""Crashes: every ACTIVE share serves again after its driver-host and Ganesha die,
and a create interrupted anywhere ends ACTIVE or ERROR, never stuck in CREATING."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from sharemesh.client import Client, OperationFailed
from sharemesh.launcher import LocalMesh
from sharemesh.runtime.coordination import Store, connect, keys
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import (
    MESH_CONFIG,
    RO,
    RW,
    AccessRule,
    Share,
    create_share,
    delete_share,
    grant,
    read,
    write,
)
from support import assert_host_clean, pid_alive

pytestmark = pytest.mark.e2e
DRIVER_HOST = "driver-host-local"
SETTLE_SECONDS = 45  # lease TTL (3 s) + restart backoff + reconcile interval, with margin


def _ganesha_pid(mesh: LocalMesh) -> int:
    return int((mesh.state_dir / "pools/local/ganesha/ganesha/ganesha.pid").read_text())


async def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while pid_alive(pid):
        await asyncio.sleep(0.02)


async def _kill_child(mesh: LocalMesh, name: str) -> None:
    """Kills a service the launcher runs, once it has restarted from any earlier kill."""
    child = mesh.children[name]
    async with asyncio.timeout(30):
        while not (child.pid and pid_alive(child.pid)):
            await asyncio.sleep(0.05)
    await _kill(child.pid)


async def _until_readable(share: Share, dst: Path, name: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if (await read(share, dst, name))[0] == 0:
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise AssertionError(f"{share.name} did not serve again within {timeout}s")


async def test_shares_serve_again_after_driver_host_and_ganesha_are_killed(
    mesh: LocalMesh, alpha: Client, tmp_path: Path
) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(256 << 10))
    writable = await create_share(alpha, "alpha", "survivor")
    readonly = await create_share(alpha, "alpha", "survivor-ro")
    await grant(alpha, writable.name, "127.0.0.1", RW)
    rule = await grant(alpha, readonly.name, "127.0.0.1", RW)
    for share in (writable, readonly):
        assert (await write(share, data, "data.bin"))[0] == 0
    await alpha.wait(
        await alpha.call(
            alpha.shares.UpdateAccessRule,
            ss.UpdateAccessRuleRequest(
                access_rule=AccessRule(name=rule.name, access_level=RO),
                update_mask={"paths": ["access_level"]},
            ),
        )
    )

    await _kill_child(mesh, DRIVER_HOST)
    await _kill(_ganesha_pid(mesh))
    back = tmp_path / "back.bin"
    took = await _until_readable(writable, back, "data.bin", SETTLE_SECONDS)
    print(f"\nshares served again {took:.2f}s after kill -9 of driver-host and Ganesha")
    for share in (writable, readonly):
        await _until_readable(share, back, "data.bin", 5)
        assert back.read_bytes() == data.read_bytes()
    assert (await write(writable, data, "after.bin"))[0] == 0, "RW rule lost"
    assert (await write(readonly, data, "after.bin"))[0] != 0, "RO rule lost"
    for share in (writable, readonly):
        await delete_share(alpha, share.name)


@pytest.mark.parametrize("victim", ["driver-host-local", "scheduler"])
@pytest.mark.parametrize("delay", [0.0, 0.1, 0.3])
async def test_an_interrupted_create_never_stays_creating(
    mesh: LocalMesh, alpha: Client, victim: str, delay: float
) -> None:
    share_id = f"interrupted-{victim.split('-')[0]}-{int(delay * 1000)}"
    op = await alpha.call(
        alpha.shares.CreateShare,
        ss.CreateShareRequest(parent="projects/alpha", share_id=share_id, share=Share(size_gib=1)),
    )
    await asyncio.sleep(delay)
    await _kill_child(mesh, victim)
    started = time.monotonic()
    try:
        share = await alpha.wait(op, Share, timeout=SETTLE_SECONDS)
        assert share.state == Share.ACTIVE
    except OperationFailed as failed:
        share = await alpha.call(
            alpha.shares.GetShare, ss.GetShareRequest(name=f"projects/alpha/shares/{share_id}")
        )
        assert share.state == Share.ERROR and share.state_message, failed
    print(
        f"\n{share_id}: {Share.State.Name(share.state)} {time.monotonic() - started:.2f}s "
        "after the kill"
    )
    await delete_share(alpha, share.name)


async def test_a_restarted_mesh_serves_its_shares_again(tmp_path: Path) -> None:
    """`sharemesh up` ended in order and started again on the same state directory:
    shares, rules and data are all back, and the host was clean in between."""
    state = tmp_path / "state"
    config = tmp_path / "mesh.toml"
    config.write_text(MESH_CONFIG.format(capacity_gib=4))
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(64 << 10))
    async with LocalMesh(state, config, api_port=0, lease_ttl_seconds=3) as mesh:
        async with Client(mesh.api_address, "alpha-key") as alpha:
            share = await create_share(alpha, "alpha", "kept")
            await grant(alpha, share.name, "127.0.0.1", RW)
            assert (await write(share, data, "data.bin"))[0] == 0
    assert_host_clean(state)

    async with LocalMesh(state, config, api_port=0, lease_ttl_seconds=3) as mesh:
        async with Client(mesh.api_address, "alpha-key") as alpha:
            again = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=share.name))
            assert again.state == Share.ACTIVE
            assert again.export_locations == share.export_locations
            back = tmp_path / "back.bin"
            await _until_readable(again, back, "data.bin", 10)
            assert back.read_bytes() == data.read_bytes()
            await delete_share(alpha, share.name)
    assert_host_clean(state)


async def test_sigterm_drains_and_revokes_the_lease_at_once(mesh: LocalMesh) -> None:
    """An orderly stop deletes the service's leased keys now, not a TTL later."""
    assert mesh.etcd is not None and mesh.config is not None
    async with connect(mesh.etcd.endpoint) as client:
        store = Store(client)
        key = keys.host_key(store.root, mesh.config.gateway.host)
        found = await store.get(key, records_pb2.HostRecord)
        assert found is not None
        events = store.watch_prefix(key, found.mod_revision + 1)
        child = mesh.children["gateway"]
        assert child.pid
        os.kill(child.pid, signal.SIGTERM)
        signalled = time.monotonic()
        async with asyncio.timeout(mesh.config.etcd.lease_ttl_seconds):
            async for event in events:
                if event.key == key and event.kind == "DELETE":
                    break
        took = time.monotonic() - signalled
        print(f"\nregistration gone {took:.2f}s after SIGTERM (lease TTL 3s)")
        assert took < 1.5
