"""The local driver's snapshots when things go wrong: a driver-host killed with -9 in the
middle of a snapshot or a revert, a share left frozen, a pool made before snapshots.
Real loop-mounted XFS, a real Ganesha, a real NFS client (nfs-cp)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sharemesh.driver_host.drivers import (
    AccessRuleSpec,
    LocalDriver,
    LocalDriverConfig,
    ShareSpec,
    SnapshotSpec,
    _loopfs,
    _reflink,
)
from sharemesh.runtime.errors import FailedPrecondition
from sharemesh.runtime.ports import free_port

from support import (
    ensure_rpcbind,
    loops_under,
    mounts_under,
    nfs_read,
    nfs_write,
    processes_mentioning,
)

pytestmark = pytest.mark.integration

MIB = 1 << 20
GIB = 1 << 30
RW = [AccessRuleSpec("127.0.0.1", "READ_WRITE")]
SHARE = ShareSpec("snappy", "projects/p/locations/l/shares/snappy", 1, "default", 31)
SNAPSHOT = SnapshotSpec("snappy-1", f"{SHARE.name}/snapshots/one", "snappy", 1, 32)

# What a killed driver-host was doing: one contract call in a process of its own.
_CHILD = """
import asyncio, json, sys
from pathlib import Path
from sharemesh.driver_host.drivers import LocalDriver, LocalDriverConfig, ShareSpec, SnapshotSpec

config, method = json.loads(sys.argv[1]), sys.argv[2]
config.update(pool_dir=Path(config["pool_dir"]), state_dir=Path(config["state_dir"]))

async def main() -> None:
    driver = LocalDriver(LocalDriverConfig(**config))
    await driver.start()
    print("started", flush=True)
    share, snapshot = ShareSpec(**json.loads(sys.argv[3])), SnapshotSpec(**json.loads(sys.argv[4]))
    await getattr(driver, method)(share, snapshot)

asyncio.run(main())
"""


@dataclasses.dataclass
class Host:
    root: Path
    config: LocalDriverConfig
    driver: LocalDriver

    @property
    def mountpoint(self) -> Path:
        return self.config.pool_dir / "mnt" / SHARE.share_id

    async def restart(self) -> None:
        """A new driver on the same state; its Ganesha keeps serving."""
        await self.driver.stop(stop_servers=False)
        self.driver = LocalDriver(self.config)
        await self.driver.start()

    async def write(self, pseudo: str, name: str, data: bytes) -> tuple[int, str]:
        src = self.root / f"src-{os.urandom(4).hex()}"
        src.write_bytes(data)
        try:
            c = self.config
            return await nfs_write(src, "127.0.0.1", pseudo, name, c.nfs_port, c.mount_port)
        finally:
            src.unlink()

    async def read(self, pseudo: str, name: str) -> bytes | None:
        dst = self.root / f"dst-{os.urandom(4).hex()}"
        try:
            rc, _ = await nfs_read(dst, "127.0.0.1", pseudo, name, self.config.nfs_port)
            return dst.read_bytes() if rc == 0 else None
        finally:
            dst.unlink(missing_ok=True)

    def child(self, method: str) -> subprocess.Popen[str]:
        config = {
            f.name: str(v) if isinstance(v, Path) else v
            for f in dataclasses.fields(self.config)
            if not isinstance(v := getattr(self.config, f.name), dict)
        }
        argv = [sys.executable, "-c", _CHILD, json.dumps(config), method]
        argv += [json.dumps(dataclasses.asdict(SHARE)), json.dumps(dataclasses.asdict(SNAPSHOT))]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def _scrub(root: Path) -> None:
    """Last resort if a test died between steps: unmount (deepest first) and detach
    everything under `root`."""
    for line in sorted(mounts_under(root), key=lambda m: -len(m.split()[1])):
        subprocess.run(["umount", "-l", line.split()[1]], check=False)
    for line in loops_under(root):
        subprocess.run(["losetup", "-d", line.split(":")[0]], check=False)


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    ensure_rpcbind()
    config = LocalDriverConfig(
        pool_dir=tmp_path / "pool",
        capacity_gib=4,
        nfs_port=free_port(),
        mount_port=free_port(),
        state_dir=tmp_path / "state",
    )
    h = Host(tmp_path, config, LocalDriver(config))
    try:
        await h.driver.start()
        yield h
    finally:
        for mountpoint in (h.mountpoint,):
            if os.path.ismount(mountpoint):
                _reflink.thaw(mountpoint)
        await h.driver.stop(stop_servers=True)
        stopped_clean = not mounts_under(tmp_path) and not loops_under(tmp_path)
        _scrub(tmp_path)
        for pid_line in processes_mentioning(str(tmp_path)):
            os.kill(int(pid_line.split()[0]), signal.SIGKILL)
        assert stopped_clean, "stop(stop_servers=True) left mounts or loop devices"


async def _share_with(host: Host, name: str, data: bytes) -> None:
    await host.driver.create_share(SHARE)
    await host.driver.update_access(SHARE, RW)
    rc, out = await host.write("/shares/snappy", name, data)
    assert rc == 0, out


async def _writable(mountpoint: Path, within: float = 10.0) -> bool:
    """A write to the filesystem completes (one that is frozen blocks until thawed)."""

    def write() -> None:
        with open(mountpoint / f"probe-{os.urandom(4).hex()}", "wb") as f:
            f.write(b"x" * 4096)
            os.fsync(f.fileno())

    try:
        await asyncio.wait_for(asyncio.to_thread(write), within)
    except TimeoutError:
        return False
    return True


async def _kill_when(child: subprocess.Popen[str], ready: Callable[[], bool]) -> bool:
    """Kills the child with SIGKILL as soon as `ready()`; False if it finished first."""
    assert child.stdout is not None
    assert child.stdout.readline() == "started\n"
    deadline = time.monotonic() + 60
    while child.poll() is None and time.monotonic() < deadline:
        if ready():
            child.send_signal(signal.SIGKILL)
            child.wait()
            return True
        await asyncio.sleep(0.001)
    child.wait()
    return False


def _freeze_helpers(mountpoint: Path) -> list[int]:
    """The processes freezing, copying and thawing `mountpoint` for a snapshot."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"fsfreeze" in b" ".join(argv) and str(mountpoint).encode() in argv:
            found.append(int(pid))
    return found


async def test_a_fresh_pool_is_a_reflink_xfs_and_offers_snapshots(host: Host) -> None:
    (pool,) = (await host.driver.stats()).pools
    assert pool.offers.snapshot_support and pool.offers.create_share_from_snapshot_support
    assert pool.offers.revert_to_snapshot_support and pool.offers.mount_snapshot_support
    images = host.config.pool_dir / "images"
    assert _loopfs.mounted_device(images) is not None, "the pool is a filesystem of its own"
    assert (host.config.pool_dir / "pool.img").stat().st_size >= 4 << 30

    # A snapshot takes no room of its own: the pool's used space barely moves.
    await _share_with(host, "a", os.urandom(64 * MIB))
    os.sync()  # the share's data on the pool, not in the page cache
    before = pool.free_gib
    (pool,) = (await host.driver.stats()).pools
    assert before - pool.free_gib >= 60 / 1024, "the share's data uses pool space"
    before = pool.free_gib
    await host.driver.create_snapshot(SHARE, SNAPSHOT)
    (pool,) = (await host.driver.stats()).pools
    assert before - pool.free_gib < 1 / 1024, "a snapshot shares its share's blocks"


async def test_a_driver_host_killed_mid_snapshot_leaves_the_share_thawed(host: Host) -> None:
    await _share_with(host, "a", b"A" * 4096)
    for attempt in range(5):
        # Dirty data the freeze must write out first: a window wide enough to kill in.
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={host.mountpoint / 'dirty'}", "bs=1M", "count=300"],
            check=True,
            capture_output=True,
        )
        child = host.child("create_snapshot")
        killed = await _kill_when(child, lambda: bool(_freeze_helpers(host.mountpoint)))
        helpers = _freeze_helpers(host.mountpoint)
        if killed and helpers:
            break
        await host.driver.delete_snapshot(SHARE, SNAPSHOT)  # it finished first: again
    else:
        pytest.fail("the driver-host was never killed while the share was frozen")

    # The helper outlives its driver-host and thaws the share.
    deadline = time.monotonic() + 30
    while _freeze_helpers(host.mountpoint) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not _freeze_helpers(host.mountpoint)
    assert await _writable(host.mountpoint), "the share stayed frozen"
    rc, out = await host.write("/shares/snappy", "b", b"B" * 4096)
    assert rc == 0, out
    # Nothing half made under the snapshot's name; a new driver-host's repeat finishes.
    snapshots = host.config.pool_dir / "images" / "snapshots"
    assert not (snapshots / "snappy-1.img").exists()
    await host.restart()
    await host.driver.create_snapshot(SHARE, SNAPSHOT)
    (location,) = await host.driver.export_snapshot(SHARE, SNAPSHOT, RW)
    assert await host.read(location.path.split(":")[1], "a") == b"A" * 4096
    assert await host.read(location.path.split(":")[1], "b") == b"B" * 4096
    assert not list(snapshots.glob(".*")), "a repeat leaves no partial copies"


async def test_a_share_left_frozen_is_thawed_by_the_next_start(host: Host) -> None:
    """The helper itself died between freeze and thaw (as if killed with -9)."""
    await _share_with(host, "a", b"A" * 4096)
    subprocess.run(["fsfreeze", "-f", str(host.mountpoint)], check=True)
    assert not await _writable(host.mountpoint, within=0.5)
    await host.restart()
    assert await _writable(host.mountpoint)
    rc, out = await host.write("/shares/snappy", "b", b"B" * 4096)
    assert rc == 0, out
    await host.driver.create_snapshot(SHARE, SNAPSHOT)  # the share can be frozen again


async def test_a_revert_killed_halfway_converges_on_repeat(host: Host) -> None:
    await _share_with(host, "a", b"A" * 4096)
    await host.driver.create_snapshot(SHARE, SNAPSHOT)
    export_file = host.config.state_dir / "ganesha" / "exports.d" / f"{SHARE.export_id}.conf"
    for attempt in range(5):
        rc, out = await host.write("/shares/snappy", "b", b"B" * 4096)  # after the snapshot
        assert rc == 0, out
        child = host.child("revert_to_snapshot")
        if await _kill_when(child, lambda: not export_file.exists()):
            break
    else:
        pytest.fail("the driver-host was never killed while the share was withdrawn")
    assert not export_file.exists(), "killed while the share was withdrawn"

    # A new driver-host, which never saw the share's rules, repeats the revert: the
    # share has the snapshot's data and serves the same clients as before.
    await host.restart()
    await host.driver.revert_to_snapshot(SHARE, SNAPSHOT)
    assert await host.read("/shares/snappy", "a") == b"A" * 4096
    assert await host.read("/shares/snappy", "b") is None
    rc, out = await host.write("/shares/snappy", "after", b"C" * 4096)
    assert rc == 0, out
    assert not list((host.config.pool_dir / "images").glob(".*")), "nothing half made stays"


async def test_a_full_restart_serves_an_exported_snapshot_from_its_files(host: Host) -> None:
    await _share_with(host, "a", b"A" * 4096)
    await host.driver.create_snapshot(SHARE, SNAPSHOT)
    (location,) = await host.driver.export_snapshot(SHARE, SNAPSHOT, RW)
    pseudo = location.path.split(":")[1]
    await host.driver.stop(stop_servers=True)
    assert not mounts_under(host.root) and not loops_under(host.root)

    # A fresh Ganesha reads the snapshot's export file: its mount must be there first.
    host.driver = LocalDriver(host.config)
    await host.driver.start()
    assert await host.read(pseudo, "a") == b"A" * 4096
    rc, out = await host.write(pseudo, "b", b"B" * 4096)
    assert rc != 0 and "ROFS" in out, out
    assert await host.read("/shares/snappy", "a") == b"A" * 4096, "and the share beside it"


def _pool_used(host: Host) -> int:
    os.sync()
    host.driver.pool.settle()
    return host.driver.pool.used_bytes()


async def test_an_exported_snapshot_costs_a_few_blocks_and_stays_as_taken(host: Host) -> None:
    """Served beside its share under a UUID of its own, without its log rewritten (64 MiB
    of a 1 GiB share, before): under 1 % of the share. Clones and reverts still start
    from the snapshot as taken."""
    await _share_with(host, "a", b"A" * 4096)
    await host.driver.create_snapshot(SHARE, SNAPSHOT)
    rc, out = await host.write("/shares/snappy", "b", b"B" * 4096)
    assert rc == 0, out
    before = _pool_used(host)
    (location,) = await host.driver.export_snapshot(SHARE, SNAPSHOT, RW)
    assert _pool_used(host) - before < 0.01 * SHARE.size_gib * GIB
    pseudo = location.path.split(":")[1]
    assert await host.read(pseudo, "a") == b"A" * 4096
    assert await host.read(pseudo, "b") is None
    assert await host.read("/shares/snappy", "b") == b"B" * 4096, "the share is served beside"

    clone = ShareSpec("snappy-c", "projects/p/locations/l/shares/snappy-c", 1, "default", 33)
    (cloned,) = await host.driver.create_share_from_snapshot(clone, SNAPSHOT)
    assert await host.read(cloned.path.split(":")[1], "a") is None, "nobody may mount it yet"
    await host.driver.update_access(clone, RW)
    assert await host.read("/shares/snappy-c", "a") == b"A" * 4096
    assert await host.read("/shares/snappy-c", "b") is None
    await host.driver.revert_to_snapshot(SHARE, SNAPSHOT)
    assert await host.read("/shares/snappy", "b") is None
    rc, out = await host.write("/shares/snappy", "c", b"C" * 4096)
    assert rc == 0, out

    # A second snapshot of the same share, exported beside the first: its own filesystem.
    second = SnapshotSpec("snappy-2", f"{SHARE.name}/snapshots/two", "snappy", 1, 34)
    await host.driver.create_snapshot(SHARE, second)
    (location2,) = await host.driver.export_snapshot(SHARE, second, RW)
    assert await host.read(location2.path.split(":")[1], "c") == b"C" * 4096
    assert await host.read(pseudo, "c") is None
    assert await host.read(pseudo, "a") == b"A" * 4096


async def test_a_revert_mounts_while_another_namespace_holds_the_old_filesystem(
    host: Host,
) -> None:
    """A process that unshared its mounts while the share was mounted keeps the share's
    old filesystem alive after the revert unmounts it; XFS then refuses a filesystem
    with the same UUID, so the reverted share must have one of its own."""
    await _share_with(host, "a", b"A" * 4096)
    await host.driver.create_snapshot(SHARE, SNAPSHOT)
    rc, out = await host.write("/shares/snappy", "b", b"B" * 4096)
    assert rc == 0, out
    holder = subprocess.Popen(["unshare", "--mount", "sleep", "120"])
    try:
        ours = os.readlink("/proc/self/ns/mnt")
        while os.readlink(f"/proc/{holder.pid}/ns/mnt") == ours:
            await asyncio.sleep(0.01)
        await host.driver.revert_to_snapshot(SHARE, SNAPSHOT)
        assert await host.read("/shares/snappy", "a") == b"A" * 4096
        assert await host.read("/shares/snappy", "b") is None
    finally:
        holder.kill()
        holder.wait()


async def test_a_pool_made_before_snapshots_keeps_its_shares(tmp_path: Path) -> None:
    ensure_rpcbind()
    pool_dir = tmp_path / "pool"
    image, mnt = pool_dir / "images" / f"{SHARE.share_id}.img", pool_dir / "mnt" / "snappy"
    await _loopfs.create_image(image, 1 << 30)  # the old layout: on the host's ext4
    await _loopfs.mount(image, mnt)
    (mnt / "kept").write_bytes(b"K" * 4096)
    await _loopfs.release(mnt, image)
    config = LocalDriverConfig(
        pool_dir=pool_dir,
        capacity_gib=4,
        nfs_port=free_port(),
        mount_port=free_port(),
        state_dir=tmp_path / "state",
    )
    host = Host(tmp_path, config, LocalDriver(config))
    try:
        await host.driver.start()
        (pool,) = (await host.driver.stats()).pools
        assert not pool.offers.snapshot_support and not pool.offers.mount_snapshot_support
        assert not (pool_dir / "pool.img").exists(), "no new pool hides the old images"
        await host.driver.ensure_share(SHARE, RW)
        assert await host.read("/shares/snappy", "kept") == b"K" * 4096
        with pytest.raises(FailedPrecondition, match="snapshot_support"):
            await host.driver.create_snapshot(SHARE, SNAPSHOT)
    finally:
        await host.driver.stop(stop_servers=True)
        clean = not mounts_under(tmp_path) and not loops_under(tmp_path)
        _scrub(tmp_path)
        assert clean
