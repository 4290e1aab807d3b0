"""The Ganesha export manager against a real ganesha.nfsd, its private bus and nfs-cp."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from sharemesh.ganesha import (
    ClientRule,
    Export,
    ExportRefused,
    GaneshaInstance,
    RefusedExport,
    client_rules,
)
from sharemesh.runtime.errors import InvalidArgument, Unavailable
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

    restarts: list[Sequence[RefusedExport]] = []

    async def on_restart(refused: Sequence[RefusedExport]) -> None:
        restarts.append(refused)

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
        assert restarts == [[]] and int(ganesha.pid_file.read_text()) != pid
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


# ---- issue #8: one export can never hurt another ------------------------------------------


async def _settled(condition: Callable[[], Awaitable[bool]], what: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"{what} within {within}s"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def _supervised(
    g: GaneshaInstance,
) -> AsyncIterator[list[Sequence[RefusedExport]]]:
    """Supervision running; yields the refused exports of each restart, as they come."""
    restarts: list[Sequence[RefusedExport]] = []

    async def on_restart(refused: Sequence[RefusedExport]) -> None:
        restarts.append(refused)

    until = asyncio.Event()
    task = asyncio.create_task(g.supervise(on_restart, interval=0.1, until=until))
    try:
        yield restarts
    finally:
        until.set()
        await asyncio.wait_for(task, 10)


def _kill(g: GaneshaInstance) -> int:
    pid = int(g.pid_file.read_text())
    os.kill(pid, signal.SIGKILL)
    return pid


def _included(g: GaneshaInstance) -> list[str]:
    text = g.config_file.read_text()
    return sorted(line.split('"')[1] for line in text.splitlines() if line.startswith("%include"))


async def test_every_client_as_0_0_0_0_slash_0_and_colon_colon_slash_0(
    ganesha: GaneshaInstance, tmp_path: Path, payload: Path
) -> None:
    """manila-csi's default clients: Ganesha 4.3 refuses `0.0.0.0/0` and silently drops
    `::/0`, so each is written as its family's two halves, with the same meaning."""
    every_v4 = _export(tmp_path, *client_rules([("0.0.0.0/0", "RW")]))
    await ganesha.apply(every_v4)
    live = await ganesha._mgr.display(7)
    assert live is not None
    assert list(live.clients) == [("0.0.0.0/1", "RW"), ("128.0.0.0/1", "RW")]
    assert (await _write(ganesha, payload, "/t/data", "f"))[0] == 0
    rc, out = await _read(ganesha, "/t/data", "f", tmp_path / "back")
    assert rc == 0 and (tmp_path / "back").read_bytes() == payload.read_bytes(), out

    # Every IPv6 client is not an IPv4 client.
    await ganesha.apply(_export(tmp_path, *client_rules([("::/0", "RW")])))
    live = await ganesha._mgr.display(7)
    assert live is not None and list(live.clients) == [("::/1", "RW"), ("8000::/1", "RW")]
    rc, out = await _read(ganesha, "/t/data", "f", tmp_path / "back")
    assert rc != 0, out

    await ganesha.apply(_export(tmp_path, *client_rules([("::/0", "RW"), ("0.0.0.0/0", "RO")])))
    rc, out = await _read(ganesha, "/t/data", "f", tmp_path / "back")
    assert rc == 0, out
    rc, out = await _write(ganesha, payload, "/t/data", "g")
    assert rc != 0 and "ROFS" in out, out


@pytest.mark.parametrize(
    "hostile", ["fe80::1%eth0", "fe80::1%a;}x{", "10.0.0.1; }", "10.0.0.1\n}", "*", "a.b"]
)
async def test_hostile_clients_are_refused_before_anything_is_written(
    ganesha: GaneshaInstance, tmp_path: Path, hostile: str
) -> None:
    await ganesha.apply(_export(tmp_path, ClientRule(("127.0.0.1",), "RW")))
    before = sorted(p.name for p in ganesha.exports_dir.iterdir())
    for attempt in (
        lambda: _export(tmp_path, *client_rules([(hostile, "RW")]), export_id=8),
        lambda: _export(tmp_path, ClientRule((hostile,), "RW"), export_id=8),
    ):
        with pytest.raises(InvalidArgument):
            await ganesha.apply(attempt())
    assert sorted(p.name for p in ganesha.exports_dir.iterdir()) == before
    assert await ganesha.live_export_ids() == {7}


async def test_a_refused_export_is_never_included_and_the_others_survive_a_restart(
    ganesha: GaneshaInstance, tmp_path: Path, payload: Path
) -> None:
    good = _export(tmp_path, ClientRule(("127.0.0.1",), "RW"))
    await ganesha.apply(good)
    assert (await _write(ganesha, payload, "/t/data", "f"))[0] == 0
    rw = (ClientRule(("127.0.0.1",), "RW"),)

    # A new export Ganesha refuses leaves no file.
    missing = str(tmp_path / "no-such-dir")
    with pytest.raises(ExportRefused) as caught:
        await ganesha.apply(Export(8, missing, "/t/bad", clients=rw))
    assert str(tmp_path) not in caught.value.message  # the detail is in the log only
    assert sorted(p.name for p in ganesha.exports_dir.iterdir()) == ["7.conf"]

    # A refused change of an export keeps its last accepted version serving.
    with pytest.raises(ExportRefused):
        await ganesha.apply(Export(7, missing, "/t/data", clients=rw))
    assert (ganesha.exports_dir / "7.conf").read_text() == good.render()
    assert await ganesha.serves(good)
    rc, out = await _read(ganesha, "/t/data", "f", tmp_path / "back")
    assert rc == 0, out

    async with _supervised(ganesha) as restarts:
        pid = _kill(ganesha)
        await _settled(lambda: _restarted(restarts), "a restart")
        assert int(ganesha.pid_file.read_text()) != pid
        assert restarts == [[]]
        assert _included(ganesha) == [str(ganesha.exports_dir / "7.conf")]
        assert await ganesha.live_export_ids() == {7}
        rc, out = await _read(ganesha, "/t/data", "f", tmp_path / "back")
        assert rc == 0 and (tmp_path / "back").read_bytes() == payload.read_bytes(), out


async def _restarted(restarts: list[Sequence[RefusedExport]]) -> bool:
    return bool(restarts)


async def test_bad_export_files_do_not_stop_a_start(
    ganesha: GaneshaInstance, tmp_path: Path, payload: Path
) -> None:
    """Files Ganesha cannot parse (it exits) or cannot serve (it skips them), left by a
    crash, an old version or a damaged disk: the start serves every other export and
    reports these, set aside where no later start includes them."""
    await ganesha.apply(_export(tmp_path, ClientRule(("127.0.0.1",), "RW")))
    assert (await _write(ganesha, payload, "/t/data", "f"))[0] == 0
    data = tmp_path / "data"
    (ganesha.exports_dir / "9.conf").write_text(
        f'EXPORT {{ Export_Id = 9; Path = "{data}"; Pseudo = "/shares/0a9"; '
        "FSAL { Name = VFS; } CLIENT { Clients = fe80::1%eth0; Access_Type = RW; } }\n"
    )
    (ganesha.exports_dir / "10.conf").write_text(
        f'EXPORT {{ Export_Id = 10; Path = "{tmp_path / "gone"}"; Pseudo = "/shares/0a10"; '
        "FSAL { Name = VFS; } CLIENT { Clients = 127.0.0.1; Access_Type = RW; } }\n"
    )

    async with _supervised(ganesha) as restarts:
        _kill(ganesha)
        await _settled(lambda: _restarted(restarts), "a restart")
        assert restarts == [[RefusedExport(9, "/shares/0a9"), RefusedExport(10, "/shares/0a10")]]
        assert await ganesha.live_export_ids() == {7}
        rc, out = await _read(ganesha, "/t/data", "f", tmp_path / "back")
        assert rc == 0, out
    assert _included(ganesha) == [str(ganesha.exports_dir / "7.conf")]
    assert (ganesha.exports_dir / "9.refused").exists()

    # A cold start is the same, and a later apply of that export takes its place.
    await ganesha.stop()
    assert await ganesha.start() == []  # set aside: not included any more
    (ganesha.exports_dir / "11.conf").write_text("EXPORT { Export_Id = 11; Path = ; }\n")
    await ganesha.stop()
    assert await ganesha.start() == [RefusedExport(11, "")]
    assert await ganesha.live_export_ids() == {7}
    await ganesha.apply(Export(9, str(data), "/shares/0a9"))
    assert not (ganesha.exports_dir / "9.refused").exists()
    assert await ganesha.live_export_ids() == {7, 9}


async def test_ganesha_down_is_unavailable_and_the_latest_export_is_applied_on_restart(
    ganesha: GaneshaInstance, tmp_path: Path, payload: Path
) -> None:
    await ganesha.apply(_export(tmp_path))  # nobody may mount
    pid = _kill(ganesha)
    await _settled(lambda: _gone(pid), "ganesha's death")
    v2 = _export(tmp_path, ClientRule(("127.0.0.1",), "RW"))
    for call in (
        lambda: ganesha.apply(v2),
        lambda: ganesha.serves(v2),
        lambda: ganesha.live_export_ids(),
    ):
        with pytest.raises(Unavailable) as caught:
            await call()
        assert str(ganesha.state_dir) not in caught.value.message

    # The restart applies what was last asked for, though Ganesha never took it.
    async with _supervised(ganesha) as restarts:
        await _settled(lambda: _restarted(restarts), "a restart")
        live = await ganesha._mgr.display(7)
        assert live is not None and list(live.clients) == [("127.0.0.1/32", "RW")]
        assert (await _write(ganesha, payload, "/t/data", "f"))[0] == 0

    # With its bus gone too (stopped), a call is just as retryable.
    await ganesha.stop()
    with pytest.raises(Unavailable):
        await ganesha.apply(v2)


async def _gone(pid: int) -> bool:
    return not pid_alive(pid)
