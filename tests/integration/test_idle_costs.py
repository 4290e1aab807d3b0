"""What a control plane pays while nothing happens, against a real etcd and Ganesha:
supervision that sleeps until a death, a lease refreshed on one stream, and exports
managed without forking a process per D-Bus call."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sharemesh.ganesha import ClientRule, Export, GaneshaInstance
from sharemesh.launcher.etcd_server import EtcdServer
from sharemesh.runtime.coordination import Session
from sharemesh.runtime.ports import free_port

from support import ensure_rpcbind, nfs_read, nfs_write, processes_mentioning

pytestmark = pytest.mark.integration


@pytest.fixture
async def ganesha(tmp_path: Path) -> AsyncIterator[GaneshaInstance]:
    ensure_rpcbind()
    instance = GaneshaInstance(tmp_path / "ganesha", free_port(), free_port())
    try:
        await instance.start()
        yield instance
    finally:
        await instance.stop()
        assert not processes_mentioning(str(instance.state_dir)), "a test process survived"


def _export(tmp_path: Path, export_id: int) -> Export:
    data = tmp_path / f"data{export_id}"
    data.mkdir(exist_ok=True)
    return Export(
        export_id=export_id,
        path=str(data),
        pseudo=f"/t/data{export_id}",
        clients=(ClientRule(("127.0.0.1",), "RW"),),
    )


@pytest.mark.parametrize("kill", ["ganesha", "bus"])
async def test_a_death_is_noticed_at_once_not_at_the_next_poll(
    ganesha: GaneshaInstance, tmp_path: Path, payload: Path, kill: str
) -> None:
    """Supervision sleeps until Ganesha or its bus exits: even with a poll interval of
    30 s, a kill -9 is followed by a restarted Ganesha within about a second."""
    export = _export(tmp_path, 7)
    await ganesha.apply(export)
    restarted = asyncio.Event()

    async def on_restart(refused: object) -> None:
        restarted.set()

    until = asyncio.Event()
    task = asyncio.create_task(ganesha.supervise(on_restart, interval=30, until=until))
    try:
        await asyncio.sleep(0.3)  # supervision is waiting now
        old = int(ganesha.pid_file.read_text())
        victim = old if kill == "ganesha" else int(ganesha.bus_pid_file.read_text())
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        await asyncio.wait_for(restarted.wait(), 10)
        took = time.monotonic() - killed
        assert took < 1.5, f"restarted {took:.2f}s after the kill"
        assert int(ganesha.pid_file.read_text()) != old and ganesha.is_alive()
        deadline = time.monotonic() + 10
        while True:  # NFSv3's services register with rpcbind a moment after the start
            rc, out = await nfs_write(
                payload, "127.0.0.1", export.pseudo, "f", ganesha.nfs_port, ganesha.mount_port
            )
            if rc == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert rc == 0, out
        # Exports are managed on the new bus too (the old connection died with the old one).
        await ganesha.apply(_export(tmp_path, 8))
        assert await ganesha.live_export_ids() == {7, 8}
        back = tmp_path / "back"
        rc, out = await nfs_read(back, "127.0.0.1", export.pseudo, "f", ganesha.nfs_port)
        assert rc == 0, out
        assert back.read_bytes() == payload.read_bytes()
    finally:
        until.set()
        await asyncio.wait_for(task, 5)


async def test_supervision_stops_at_once_when_told(ganesha: GaneshaInstance) -> None:
    until = asyncio.Event()
    task = asyncio.create_task(ganesha.supervise(until=until))
    await asyncio.sleep(0.2)
    until.set()
    await asyncio.wait_for(task, 1)
    assert ganesha.is_alive()


async def test_exports_are_managed_without_a_process_per_call(
    ganesha: GaneshaInstance, tmp_path: Path
) -> None:
    """Applies and removes talk to Ganesha on one D-Bus connection: no `dbus-send`
    child per call, whose CPU would show in this process's reaped children."""
    before = os.times()
    for export_id in range(10, 30):
        await ganesha.apply(_export(tmp_path, export_id))
    assert await ganesha.live_export_ids() == set(range(10, 30))
    for export_id in range(10, 30):
        await ganesha.remove(export_id)
    assert await ganesha.live_export_ids() == set()
    after = os.times()
    children = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    assert children < 0.02, f"{children:.2f}s of CPU in child processes for 40 changes"


def _keepalive_streams(etcd: EtcdServer) -> int:
    """How many LeaseKeepAlive streams etcd has started, from its own metrics."""
    with urllib.request.urlopen(f"{etcd.endpoint}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(
        r'grpc_server_started_total\{[^}]*grpc_method="LeaseKeepAlive"[^}]*\} (\d+)', text
    )
    return int(found.group(1)) if found else 0


async def test_a_lease_is_refreshed_on_one_stream(  # type: ignore[no-untyped-def]
    etcd_server: EtcdServer, etcd_client, etcd_root: str
) -> None:
    """A session refreshes its lease every TTL/2 over one LeaseKeepAlive stream, not a
    stream per refresh, and its keys outlive several TTLs."""
    key = f"{etcd_root}alive".encode()
    before = _keepalive_streams(etcd_server)
    async with Session(etcd_client, ttl=2) as session:
        await etcd_client.put(key, b"1", lease=session.lease_id)
        await asyncio.sleep(4.5)  # over two TTLs: about four refreshes
        assert not session.lost
        assert await etcd_client.get(key) is not None, "the leased key expired"
        streams = _keepalive_streams(etcd_server) - before
    assert streams == 1, f"{streams} keep-alive streams for one session"
