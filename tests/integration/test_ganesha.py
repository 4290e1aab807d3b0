"""The Ganesha export manager against a real ganesha.nfsd, its private bus and nfs-cp."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from sharemesh.ganesha import ClientRule, Export, GaneshaInstance
from sharemesh.runtime.ports import free_port

from support import ensure_rpcbind, nfs_read, nfs_write, pid_alive, processes_mentioning

pytestmark = pytest.mark.integration


async def _write(g: GaneshaInstance, src: Path, pseudo: str, name: str) -> tuple[int, str]:
    return await nfs_write(src, "127.0.0.1", pseudo, name, g.nfs_port, g.mount_port)


async def _read(g: GaneshaInstance, pseudo: str, name: str, dst: Path) -> tuple[int, str]:
    dst.unlink(missing_ok=True)  # nfs-cp never overwrites
    return await nfs_read(dst, "127.0.0.1", pseudo, name, g.nfs_port)


@pytest.fixture
async def ganesha(tmp_path: Path):
    ensure_rpcbind()
    instance = GaneshaInstance(tmp_path / "ganesha", free_port(), free_port())
    try:
        await instance.start()
        yield instance
    finally:
        await instance.stop()
        assert not processes_mentioning(str(instance.state_dir)), "a test process survived"


def _export(tmp_path: Path, *rules: ClientRule, export_id: int = 7) -> Export:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    return Export(export_id=export_id, path=str(data), pseudo="/t/data", clients=tuple(rules))


async def test_rw_write_v3_read_v4(ganesha: GaneshaInstance, tmp_path: Path, payload: Path) -> None:
    export = _export(tmp_path, ClientRule(("127.0.0.1",), "RW"))
    await ganesha.apply(export)
    assert await ganesha.live_export_ids() == {7}
    assert (ganesha.exports_dir / "7.conf").read_text() == export.render()

    rc, out = await _write(ganesha, payload, "/t/data", "f")
    assert rc == 0, out
    rc, out = await _read(ganesha, "/t/data", "f", tmp_path / "back")
    assert rc == 0, out
    assert (tmp_path / "back").read_bytes() == payload.read_bytes()


async def test_update_ro_then_none(ganesha: GaneshaInstance, tmp_path: Path, payload: Path) -> None:
    await ganesha.apply(_export(tmp_path, ClientRule(("127.0.0.1",), "RW")))
    assert (await _write(ganesha, payload, "/t/data", "f"))[0] == 0

    await ganesha.apply(
        _export(tmp_path, ClientRule(("127.0.0.1",), "RO"), ClientRule(("10.0.0.0/8",), "RW"))
    )
    rc, out = await _write(ganesha, payload, "/t/data", "g")
    assert rc != 0 and "ROFS" in out, out
    rc, out = await _read(ganesha, "/t/data", "f", tmp_path / "back")
    assert rc == 0, out

    await ganesha.apply(_export(tmp_path))  # no clients: exported, but nobody may mount
    assert await ganesha.live_export_ids() == {7}
    rc, out = await _read(ganesha, "/t/data", "f", tmp_path / "back")
    assert rc != 0, out
    rc, out = await _write(ganesha, payload, "/t/data", "h")
    assert rc != 0 and "ACCES" in out, out


async def test_remove_and_sync(ganesha: GaneshaInstance, tmp_path: Path) -> None:
    rw = ClientRule(("127.0.0.1",), "RW")
    for i in (1, 2, 3):
        (tmp_path / f"d{i}").mkdir()
        await ganesha.apply(Export(i, str(tmp_path / f"d{i}"), f"/t/d{i}", clients=(rw,)))
    assert await ganesha.live_export_ids() == {1, 2, 3}

    await ganesha.remove(2)
    await ganesha.remove(2)  # missing is success
    assert await ganesha.live_export_ids() == {1, 3}
    assert not (ganesha.exports_dir / "2.conf").exists()

    (tmp_path / "d4").mkdir()
    await ganesha.sync(
        [
            Export(3, str(tmp_path / "d3"), "/t/d3"),
            Export(4, str(tmp_path / "d4"), "/t/d4", clients=(rw,)),
        ]
    )
    assert await ganesha.live_export_ids() == {3, 4}
    assert sorted(p.name for p in ganesha.exports_dir.glob("*.conf")) == ["3.conf", "4.conf"]


async def test_adopt_by_pidfile_and_restart_with_exports(
    ganesha: GaneshaInstance, tmp_path: Path, payload: Path
) -> None:
    await ganesha.apply(_export(tmp_path, ClientRule(("127.0.0.1",), "RW")))
    assert (await _write(ganesha, payload, "/t/data", "f"))[0] == 0
    pid = int(ganesha.pid_file.read_text())

    # A new incarnation of the service finds the same server by pidfile.
    again = GaneshaInstance(ganesha.state_dir, ganesha.nfs_port, ganesha.mount_port)
    assert again.adopt()
    await again.start()
    assert int(again.pid_file.read_text()) == pid
    assert await again.live_export_ids() == {7}

    # Stopped and started cold, it serves its export files again.
    await again.stop()
    assert not again.is_alive() and not ganesha.is_alive()
    await again.start()
    assert await again.live_export_ids() == {7}
    rc, out = await _read(again, "/t/data", "f", tmp_path / "back")
    assert rc == 0, out


async def test_supervise_restarts_killed_ganesha(
    ganesha: GaneshaInstance, tmp_path: Path, payload: Path
) -> None:
    export = _export(tmp_path, ClientRule(("127.0.0.1",), "RW"))
    await ganesha.apply(export)
    assert (await _write(ganesha, payload, "/t/data", "f"))[0] == 0

    restarts: list[float] = []

    async def on_restart() -> None:
        restarts.append(time.monotonic())
        await ganesha.sync([export])

    until = asyncio.Event()
    task = asyncio.create_task(ganesha.supervise(on_restart, until=until))
    try:
        pid = int(ganesha.pid_file.read_text())
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        while True:
            rc, _ = await _read(ganesha, "/t/data", "f", tmp_path / "back")
            if rc == 0:
                break
            assert time.monotonic() - killed < 30, "ganesha did not come back"
            await asyncio.sleep(0.05)
        print(f"\n[ganesha] kill -9 to first NFSv4 read: {time.monotonic() - killed:.2f}s")
        # The restarted server already serves its export files; on_restart follows.
        for _ in range(100):
            if restarts:
                break
            await asyncio.sleep(0.05)
        assert restarts and int(ganesha.pid_file.read_text()) != pid
        assert (tmp_path / "back").read_bytes() == payload.read_bytes()
    finally:
        until.set()
        await asyncio.wait_for(task, 5)


async def test_a_bus_left_without_its_pidfile_is_replaced_not_doubled(tmp_path: Path) -> None:
    """A crash between starting Ganesha's D-Bus daemon and writing its pidfile leaves an
    untracked bus; the next start stops it rather than running a second one."""
    ensure_rpcbind()
    instance = GaneshaInstance(tmp_path / "ganesha", free_port(), free_port())
    try:
        await instance.start()
        pid = int(instance.pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        while pid_alive(pid):
            await asyncio.sleep(0.02)
        instance.bus_pid_file.unlink()  # as if the crash came before it was written

        await instance.start()
        buses = [p for p in processes_mentioning(str(instance.bus_config)) if "dbus-daemon" in p]
        assert len(buses) == 1, buses
        assert await instance.live_export_ids() == set()  # the new bus reaches Ganesha
    finally:
        await instance.stop()
    assert not processes_mentioning(str(instance.state_dir)), "a test process survived"
