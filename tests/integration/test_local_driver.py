"""The local driver end to end: XFS images on loop devices, a real Ganesha, nfs-cp."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from sharemesh.driver_host.drivers import (
    AccessRuleSpec,
    Driver,
    LocalDriver,
    LocalDriverConfig,
    ShareSpec,
    _loopfs,
)
from sharemesh.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from sharemesh.runtime.ports import free_port

from support import ensure_rpcbind, nfs_read, nfs_url, nfs_write, processes_mentioning, run

pytestmark = pytest.mark.integration

RW = [AccessRuleSpec("127.0.0.1", "READ_WRITE")]
RO = [AccessRuleSpec("127.0.0.1", "READ_ONLY")]
_ids = itertools.count(1)


@dataclass
class Backend:
    config: LocalDriverConfig
    driver: LocalDriver

    async def write(self, share: ShareSpec, src: Path, name: str) -> tuple[int, str]:
        c = self.config
        return await nfs_write(src, "127.0.0.1", _pseudo(share), name, c.nfs_port, c.mount_port)

    async def read(self, share: ShareSpec, name: str, dst: Path) -> tuple[int, str]:
        dst.unlink(missing_ok=True)  # nfs-cp never overwrites
        return await nfs_read(dst, "127.0.0.1", _pseudo(share), name, self.config.nfs_port)

    async def ls(self, share: ShareSpec) -> tuple[int, str]:
        c = self.config
        url = nfs_url("127.0.0.1", "/shares", share.share_id, 3, c.nfs_port, c.mount_port)
        return await run("nfs-ls", url)


def _pseudo(share: ShareSpec) -> str:
    return f"/shares/{share.share_id}"


@pytest.fixture(scope="module")
async def backend(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Backend]:
    ensure_rpcbind()
    root = tmp_path_factory.mktemp("local")
    config = LocalDriverConfig(
        pool_dir=root / "pool",
        capacity_gib=6,
        nfs_port=free_port(),
        mount_port=free_port(),
        state_dir=root / "state",
    )
    b = Backend(config, LocalDriver(config))
    try:
        await b.driver.start()
        yield b
    finally:
        await b.driver.stop(stop_servers=True)
        # Last resort if a test died between steps: nothing may outlive the module.
        for image in (config.pool_dir / "images").glob("*.img"):
            await _loopfs.unmount(config.pool_dir / "mnt" / image.stem)
            await _loopfs.detach(image)
        await _loopfs.unmount(config.pool_dir / "images")  # the pool's own filesystem
        await _loopfs.detach(config.pool_dir / "pool.img")
        assert not processes_mentioning(str(root)), "a test process survived"


@pytest.fixture
async def share(backend: Backend) -> AsyncIterator[ShareSpec]:
    n = next(_ids)
    spec = ShareSpec(
        share_id=f"share-{n}-{os.getpid()}",
        name=f"projects/p/locations/l/shares/s{n}",
        size_gib=1,
        pool="default",
        export_id=100 + n,
    )
    try:
        started = time.monotonic()
        locations = await backend.driver.create_share(spec)
        print(f"\n[local] create_share 1 GiB: {time.monotonic() - started:.3f}s")
        assert locations[0].path == f"127.0.0.1:/shares/{spec.share_id}"
        assert locations[0].nfs_port == backend.config.nfs_port
        yield spec
    finally:
        await backend.driver.delete_share(spec)


async def _allow_and_time(backend: Backend, share: ShareSpec, rules: list[AccessRuleSpec]) -> None:
    started = time.monotonic()
    await backend.driver.update_access(share, rules)
    rc, out = await backend.ls(share)
    assert rc == 0, out
    print(f"[local] update_access to mountable: {time.monotonic() - started:.3f}s")


def _fill(mountpoint: Path, leave_bytes: int) -> None:
    st = os.statvfs(mountpoint)
    free = st.f_bavail * st.f_frsize
    subprocess.run(
        ["fallocate", "-l", str(free - leave_bytes), str(mountpoint / "filler")], check=True
    )


def test_is_a_driver(backend: Backend) -> None:
    assert isinstance(backend.driver, Driver)


async def test_stats(backend: Backend, share: ShareSpec) -> None:
    (pool,) = (await backend.driver.stats()).pools
    assert pool.name == "default" and pool.total_gib == 6
    # Free is what the pool's filesystem really has: the empty share takes next to nothing.
    assert pool.provisioned_gib == 1 and 5.5 < pool.free_gib <= 6
    assert pool.capabilities["shrink_support"] == "false"
    assert pool.capabilities["thin_provisioning"] == "true"
    with pytest.raises(ResourceExhausted):
        await backend.driver.create_share(replace(share, share_id="too-big", size_gib=6))
    assert not (backend.config.pool_dir / "images" / "too-big.img").exists()


async def test_provisioned_follows_creates_grows_and_deletes(
    backend: Backend, share: ShareSpec
) -> None:
    """The driver keeps the pool's provisioned bytes as images change (no stat of every
    image per create); a driver started afresh counts the same from the images."""

    async def provisioned() -> float:
        (pool,) = (await backend.driver.stats()).pools
        return pool.provisioned_gib

    before = await provisioned()
    other = replace(share, share_id=f"{share.share_id}-b", export_id=share.export_id + 500)
    await backend.driver.create_share(other)
    try:
        assert await provisioned() == before + 1
        await backend.driver.resize_share(other, 3)
        assert await provisioned() == before + 3
        assert LocalDriver(backend.config)._provisioned_bytes() == (before + 3) * (1 << 30)
        too_big = replace(
            share, share_id="too-big", size_gib=int(6 - before - 2), export_id=other.export_id + 1
        )
        with pytest.raises(ResourceExhausted):
            await backend.driver.create_share(too_big)
    finally:
        await backend.driver.delete_share(other)
    assert await provisioned() == before
    await backend.driver.create_share(too_big)  # fits once the other is gone
    await backend.driver.delete_share(too_big)
    assert await provisioned() == before


async def test_concurrent_creates_never_provision_beyond_the_pool(
    backend: Backend, share: ShareSpec
) -> None:
    """Creates check against each other while their images are made (no lock is held
    over mkfs): of concurrent creates beyond the pool's room, exactly those that fit are
    made, and the others refused."""
    (pool,) = (await backend.driver.stats()).pools
    room = int(backend.config.capacity_gib - pool.provisioned_gib)
    specs = [
        replace(share, share_id=f"{share.share_id}-c{i}", export_id=share.export_id + 600 + i)
        for i in range(room + 3)
    ]
    results = await asyncio.gather(
        *(backend.driver.create_share(spec) for spec in specs), return_exceptions=True
    )
    try:
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(refused) == 3, results
        assert all(isinstance(r, ResourceExhausted) for r in refused), refused
        (pool,) = (await backend.driver.stats()).pools
        assert pool.provisioned_gib == backend.config.capacity_gib
    finally:
        await asyncio.gather(*(backend.driver.delete_share(spec) for spec in specs))
    (pool,) = (await backend.driver.stats()).pools
    assert pool.provisioned_gib == backend.config.capacity_gib - room


async def test_write_v3_read_v4_and_nospc(
    backend: Backend, share: ShareSpec, tmp_path: Path, payload: Path
) -> None:
    # Created, the share is exported to nobody.
    rc, out = await backend.ls(share)
    assert rc != 0, out
    # Repeating create does not reset the rules given since.
    await _allow_and_time(backend, share, RW)
    await backend.driver.create_share(share)
    rc, out = await backend.write(share, payload, "one")
    assert rc == 0, out
    rc, out = await backend.read(share, "one", tmp_path / "back")
    assert rc == 0, out
    assert (tmp_path / "back").read_bytes() == payload.read_bytes()

    # The image size is a hard limit.
    _fill(backend.config.pool_dir / "mnt" / share.share_id, leave_bytes=512 << 10)
    big = tmp_path / "big"
    big.write_bytes(os.urandom(4 << 20))
    rc, out = await backend.write(share, big, "big")
    # nfs-cp prints no NFS status here, only the failure (the server answers NOSPC).
    assert rc != 0 and "Failed to write" in out, out
    stored = backend.config.pool_dir / "mnt" / share.share_id / "big"
    assert stored.stat().st_size < big.stat().st_size

    # Grown while mounted, the same write now fits.
    await backend.driver.resize_share(share, 2)
    await backend.driver.resize_share(share, 2)  # a repeat is harmless
    st = os.statvfs(backend.config.pool_dir / "mnt" / share.share_id)
    assert st.f_blocks * st.f_frsize > int(1.9 * (1 << 30))
    rc, out = await backend.write(share, big, "big2")  # nfs-cp never overwrites
    assert rc == 0, out
    rc, out = await backend.read(share, "big2", tmp_path / "big-back")
    assert rc == 0 and (tmp_path / "big-back").read_bytes() == big.read_bytes(), out
    (pool,) = (await backend.driver.stats()).pools
    assert pool.provisioned_gib == 2

    with pytest.raises(FailedPrecondition, match="shrink_support") as caught:
        await backend.driver.resize_share(share, 1)
    assert caught.value.metadata == {"capability": "shrink_support"}


async def test_read_only_and_no_rules(
    backend: Backend, share: ShareSpec, tmp_path: Path, payload: Path
) -> None:
    await backend.driver.update_access(share, RW)
    assert (await backend.write(share, payload, "one"))[0] == 0

    await _allow_and_time(backend, share, RO)
    rc, out = await backend.write(share, payload, "two")
    assert rc != 0 and "ROFS" in out, out
    rc, out = await backend.read(share, "one", tmp_path / "back")
    assert rc == 0 and (tmp_path / "back").read_bytes() == payload.read_bytes(), out

    await backend.driver.update_access(share, [])
    rc, out = await backend.read(share, "one", tmp_path / "back")
    assert rc != 0, out
    rc, out = await backend.ls(share)
    assert rc != 0 and "ACCES" in out, out

    # A host's own rule wins over its subnet's, whatever the order given.
    await backend.driver.update_access(
        share,
        [AccessRuleSpec("127.0.0.0/8", "READ_ONLY"), AccessRuleSpec("127.0.0.1", "READ_WRITE")],
    )
    assert (await backend.write(share, payload, "three"))[0] == 0


async def test_supervise_brings_back_killed_ganesha(
    backend: Backend, share: ShareSpec, tmp_path: Path, payload: Path
) -> None:
    await backend.driver.update_access(share, RW)
    assert (await backend.write(share, payload, "one"))[0] == 0
    task = asyncio.create_task(backend.driver.supervise())
    try:
        pid = int(backend.driver.ganesha.pid_file.read_text())
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        while (await backend.read(share, "one", tmp_path / "back"))[0] != 0:
            assert time.monotonic() - killed < 30, "ganesha did not come back"
            await asyncio.sleep(0.05)
        print(f"[local] kill -9 ganesha to first read: {time.monotonic() - killed:.2f}s")
        assert (tmp_path / "back").read_bytes() == payload.read_bytes()
        assert int(backend.driver.ganesha.pid_file.read_text()) != pid
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_driver_host_restart_adopts_ganesha(
    backend: Backend, share: ShareSpec, tmp_path: Path, payload: Path
) -> None:
    await backend.driver.update_access(share, RW)
    assert (await backend.write(share, payload, "one"))[0] == 0
    pid = int(backend.driver.ganesha.pid_file.read_text())
    task = asyncio.create_task(backend.driver.supervise())

    await backend.driver.stop(stop_servers=False)
    await asyncio.wait_for(task, 5)  # stop ends supervision, not the server
    assert (await backend.read(share, "one", tmp_path / "back"))[0] == 0

    backend.driver = LocalDriver(backend.config)  # the restarted driver host
    started = time.monotonic()
    await backend.driver.start()
    assert int(backend.driver.ganesha.pid_file.read_text()) == pid
    locations = await backend.driver.ensure_share(share, RO)
    print(f"[local] restart: start (adopt) + ensure_share: {time.monotonic() - started:.3f}s")
    assert locations[0].path.endswith(f"/shares/{share.share_id}")
    rc, out = await backend.write(share, payload, "two")
    assert rc != 0 and "ROFS" in out, out
    assert (await backend.read(share, "one", tmp_path / "back"))[0] == 0


async def test_a_repeat_after_a_crash_between_steps_reuses_the_loop_device(
    backend: Backend, share: ShareSpec, payload: Path, tmp_path: Path
) -> None:
    """The driver-host died after `losetup` but before `mount`: the repeat finds the
    image's loop device instead of attaching a second one, and serves the data."""
    await backend.driver.update_access(share, RW)
    assert (await backend.write(share, payload, "one"))[0] == 0
    image = backend.config.pool_dir / "images" / f"{share.share_id}.img"
    mountpoint = backend.config.pool_dir / "mnt" / share.share_id
    (device,) = _loopfs.loop_devices(image)
    await backend.driver.ganesha.remove(share.export_id)
    await _loopfs.unmount(mountpoint)
    assert _loopfs.mounted_device(mountpoint) is None and _loopfs.loop_devices(image) == [device]

    await backend.driver.create_share(share)
    await backend.driver.update_access(share, RW)
    assert _loopfs.loop_devices(image) == [device] == [_loopfs.mounted_device(mountpoint)]
    assert (await backend.read(share, "one", tmp_path / "back"))[0] == 0


async def test_delete_leaves_nothing(backend: Backend, share: ShareSpec, payload: Path) -> None:
    await backend.driver.update_access(share, RW)
    assert (await backend.write(share, payload, "one"))[0] == 0
    image = backend.config.pool_dir / "images" / f"{share.share_id}.img"
    mountpoint = backend.config.pool_dir / "mnt" / share.share_id
    listed = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True)
    assert _loopfs.loop_devices(image) == [listed.stdout.split(":")[0]]

    await backend.driver.delete_share(share)
    await backend.driver.delete_share(share)  # missing is success

    assert not _loopfs.loop_devices(image)
    assert subprocess.run(["losetup", "-j", str(image)], capture_output=True).stdout == b""
    assert str(mountpoint) not in Path("/proc/mounts").read_text()
    assert not image.exists() and not mountpoint.exists()
    assert share.export_id not in await backend.driver.ganesha.live_export_ids()
    rc, out = await backend.ls(share)
    assert rc != 0, out


# ---- issue #8: re-applies after a Ganesha restart are ordered with rule changes ----------


async def _kill_and_catch_the_restart(backend: Backend) -> None:
    """kill -9 Ganesha and return once its successor has written its pidfile: the
    supervisor is then restarting it, and holds the instance for the re-apply."""
    pid_file = backend.driver.ganesha.pid_file
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(FileNotFoundError, ValueError):
            if int(pid_file.read_text()) != pid:
                return
        assert time.monotonic() < deadline, "ganesha was not restarted"
        await asyncio.sleep(0.005)


async def _retrying(call: Callable[[], Awaitable[None]]) -> None:
    """What the driver-host does with Unavailable: retry until the server is back."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return await call()
        except Unavailable:
            assert time.monotonic() < deadline, "still unavailable"
            await asyncio.sleep(0.1)


@asynccontextmanager
async def _supervised(backend: Backend) -> AsyncIterator[list[Sequence[str]]]:
    restarts: list[Sequence[str]] = []

    async def on_restart(refused: Sequence[str]) -> None:
        restarts.append(refused)

    task = asyncio.create_task(backend.driver.supervise(on_restart))
    try:
        yield restarts
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _until_restarted(restarts: list[Sequence[str]]) -> None:
    deadline = time.monotonic() + 30
    while not restarts:
        assert time.monotonic() < deadline, "no restart was reported"
        await asyncio.sleep(0.05)


async def test_a_rule_change_during_a_restart_is_not_undone(
    backend: Backend, share: ShareSpec, payload: Path
) -> None:
    """A change queued behind a restart must win over the re-apply of what the restart
    found (it once wrote the older rules back: MNT3ERR_ACCES for 19 s)."""
    await backend.driver.update_access(share, [AccessRuleSpec("10.9.9.9", "READ_WRITE")])
    async with _supervised(backend) as restarts:
        await _kill_and_catch_the_restart(backend)
        await _retrying(lambda: backend.driver.update_access(share, RW))
        await _until_restarted(restarts)
        await asyncio.sleep(1)  # anything stale would land by now
        assert restarts == [[]]
        live = await backend.driver.ganesha._mgr.display(share.export_id)
        assert live is not None and list(live.clients) == [("127.0.0.1/32", "RW")]
        rc, out = await backend.write(share, payload, "after-restart")
        assert rc == 0, out


async def test_a_delete_during_a_restart_leaves_no_export_file(
    backend: Backend, share: ShareSpec
) -> None:
    await backend.driver.update_access(share, RW)
    exports_dir = backend.driver.ganesha.exports_dir
    assert (exports_dir / f"{share.export_id}.conf").exists()
    async with _supervised(backend) as restarts:
        await _kill_and_catch_the_restart(backend)
        await _retrying(lambda: backend.driver.delete_share(share))
        await _until_restarted(restarts)
        await asyncio.sleep(1)
        assert restarts == [[]]
        assert not list(exports_dir.glob(f"{share.export_id}.*"))
        assert share.export_id not in await backend.driver.ganesha.live_export_ids()
    rc, out = await backend.ls(share)
    assert rc != 0, out
    # Nor does a later start bring it back.
    await backend.driver.ganesha.stop()
    await backend.driver.ganesha.start()
    assert share.export_id not in await backend.driver.ganesha.live_export_ids()


async def test_hostile_rules_are_refused_and_every_share_keeps_serving(
    backend: Backend, share: ShareSpec, payload: Path, tmp_path: Path
) -> None:
    await backend.driver.update_access(share, RW)
    assert (await backend.write(share, payload, "one"))[0] == 0
    conf = backend.driver.ganesha.exports_dir / f"{share.export_id}.conf"
    before = conf.read_text()
    for hostile in ("fe80::1%eth0", "fe80::1%a;}x{", "10.0.0.1; }"):
        with pytest.raises(InvalidArgument):
            await backend.driver.update_access(share, [AccessRuleSpec(hostile, "READ_WRITE")])
    assert conf.read_text() == before

    # Every client, in manila-csi's spelling.
    await backend.driver.update_access(
        share, [AccessRuleSpec("0.0.0.0/0", "READ_WRITE"), AccessRuleSpec("::/0", "READ_WRITE")]
    )
    async with _supervised(backend) as restarts:
        await _kill_and_catch_the_restart(backend)
        await _until_restarted(restarts)
        assert restarts == [[]]
        rc, out = await backend.read(share, "one", tmp_path / "back")
        assert rc == 0 and (tmp_path / "back").read_bytes() == payload.read_bytes(), out
