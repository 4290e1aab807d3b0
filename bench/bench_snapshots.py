"""Snapshots of the local driver, at the driver: a 1 GiB share full of data (real XFS
image on a loop device in a reflink pool, exported by a real Ganesha).

Reports, each beside a plain full copy of the same image (`cp --reflink=never`, the
baseline) measured in the same run, with their ratio:

- snapshot time (`create_snapshot`; the share is frozen only for the reflink copy);
- the pool's new used space per snapshot;
- `export_snapshot` time (the snapshot mounted read-only and served), and the pool's new
  used space for it;
- `create_share_from_snapshot` time, until the new share is mounted and exported, and
  the pool's new used space for it;
- `revert_to_snapshot` time, and how long the share's export was withdrawn.

Then the same through a whole mesh (`--mesh`, on by default), as a tenant sees it: from
the API call to the Operation done, CreateSnapshot to READY, CreateShare from the
snapshot to ACTIVE, RevertShare to ACTIVE; and the pool's new used space for a snapshot
(the mesh exports every READY one) and for a clone.

It prints figures, never asserts them. Everything it makes is removed at the end.

    .venv/bin/python bench/bench_snapshots.py [--rounds 5] [--size-gib 1] [--no-mesh]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(HERE)]

from sharemesh.client import Client  # noqa: E402
from sharemesh.driver_host.drivers import (  # noqa: E402
    AccessRuleSpec,
    LocalDriver,
    LocalDriverConfig,
    ShareSpec,
    SnapshotSpec,
    _reflink,
)
from sharemesh.launcher import LocalMesh  # noqa: E402
from sharemesh.runtime.ports import free_port  # noqa: E402
from sharemesh.v1 import share_pb2, snapshot_pb2  # noqa: E402
from sharemesh.v1 import share_service_pb2 as ss  # noqa: E402

from support import ensure_rpcbind, loops_under, mounts_under  # noqa: E402

GIB = 1 << 30
RW = [AccessRuleSpec("127.0.0.1", "READ_WRITE")]


def used_bytes(pool: Path) -> int:
    os.sync()
    _reflink.settle(pool / "images")  # a deleted image's blocks are freed in the background
    st = os.statvfs(pool / "images")
    return (st.f_blocks - st.f_bavail) * st.f_frsize


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    started = time.monotonic()
    await call()
    return time.monotonic() - started


def full_copy(src: Path, dst: Path) -> float:
    """The baseline: the same image copied block by block, synced."""
    started = time.monotonic()
    subprocess.run(["cp", "--reflink=never", str(src), str(dst)], check=True)
    subprocess.run(["sync", "-f", str(dst)], check=True)
    return time.monotonic() - started


def line(what: str, ours: float, baseline: float, unit: str = "ms") -> None:
    scale = 1000 if unit == "ms" else 1 / (1 << 20)
    print(
        f"{what:<34} {ours * scale:10.1f} {unit}   full copy {baseline * scale:10.1f} {unit}"
        f"   ratio {ours / baseline if baseline else float('nan'):.4f}"
    )


async def main(rounds: int, size_gib: int) -> None:
    ensure_rpcbind()
    root = Path(tempfile.mkdtemp(prefix="bench-snapshots-"))
    config = LocalDriverConfig(
        pool_dir=root / "pool",
        capacity_gib=size_gib * (rounds + 4) + 2,
        max_over_subscription_ratio=1.0,
        nfs_port=free_port(),
        mount_port=free_port(),
        state_dir=root / "state",
    )
    driver = LocalDriver(config)
    share = ShareSpec("bench", "projects/p/locations/l/shares/bench", size_gib, "default", 10)
    image = config.pool_dir / "images" / "bench.img"
    mountpoint = config.pool_dir / "mnt" / "bench"
    snap_times, snap_space, clone_times, revert_times, copy_times = [], [], [], [], []
    export_times, export_space, clone_space = [], [], []
    try:
        await driver.start()
        await driver.create_share(share)
        await driver.update_access(share, RW)
        # Full of data: random bytes in files up to ~80 % of the share, on the pool.
        fill = int(size_gib * GIB * 0.8)
        subprocess.run(
            [
                "dd",
                "if=/dev/urandom",
                f"of={mountpoint / 'data'}",
                "bs=4M",
                f"count={fill // (4 << 20)}",
                "conv=fsync",
            ],
            check=True,
            capture_output=True,
        )
        print(f"share: {size_gib} GiB, {fill / GIB:.2f} GiB of data; {rounds} rounds")
        for n in range(rounds):
            # Some new data since the last round, so each snapshot freezes real work.
            with open(mountpoint / f"new-{n}", "wb") as f:
                f.write(os.urandom(8 << 20))
            snapshot = SnapshotSpec(
                f"bench-{n}", f"{share.name}/snapshots/{n}", "bench", size_gib, 200 + n
            )
            before = used_bytes(config.pool_dir)
            snap_times.append(await timed(lambda: driver.create_snapshot(share, snapshot)))
            snap_space.append(used_bytes(config.pool_dir) - before)
            before = used_bytes(config.pool_dir)
            export_times.append(await timed(lambda: driver.export_snapshot(share, snapshot, RW)))
            export_space.append(used_bytes(config.pool_dir) - before)

            clone = ShareSpec(
                f"clone-{n}", f"projects/p/locations/l/shares/c{n}", size_gib, "default", 100 + n
            )
            before = used_bytes(config.pool_dir)
            clone_times.append(
                await timed(lambda: driver.create_share_from_snapshot(clone, snapshot))
            )
            clone_space.append(used_bytes(config.pool_dir) - before)
            revert_times.append(await timed(lambda: driver.revert_to_snapshot(share, snapshot)))
            await driver.delete_share(clone)

            copy = config.pool_dir / "images" / "snapshots" / f".baseline-{n}"
            copy_times.append(await asyncio.to_thread(full_copy, image, copy))
            copy.unlink()
        baseline = statistics.median(copy_times)
        print(f"{'':34} {'median':>10}      baseline (median of {rounds})")
        line("create_snapshot", statistics.median(snap_times), baseline)
        full_bytes, share_bytes = image.stat().st_blocks * 512, size_gib * GIB
        line("  pool space per snapshot", statistics.median(snap_space), full_bytes, unit="MiB")
        print(f"  = {100 * statistics.median(snap_space) / share_bytes:.3f} % of the share")
        line("export_snapshot", statistics.median(export_times), baseline)
        line("  pool space per export", statistics.median(export_space), full_bytes, unit="MiB")
        print(f"  = {100 * statistics.median(export_space) / share_bytes:.3f} % of the share")
        line("create_share_from_snapshot", statistics.median(clone_times), baseline)
        line("  pool space per clone", statistics.median(clone_space), full_bytes, unit="MiB")
        line("revert_to_snapshot", statistics.median(revert_times), baseline)
        print(
            "all rounds (ms): snapshot",
            [round(t * 1000) for t in snap_times],
            "export",
            [round(t * 1000) for t in export_times],
            "clone",
            [round(t * 1000) for t in clone_times],
            "revert",
            [round(t * 1000) for t in revert_times],
            "full copy",
            [round(t * 1000) for t in copy_times],
        )
    finally:
        for n in range(rounds):
            await driver.delete_snapshot(share, SnapshotSpec(f"bench-{n}", "", "bench", 0, 200 + n))
        await driver.delete_share(share)
        await driver.stop(stop_servers=True)
        left = mounts_under(root) + loops_under(root)
        subprocess.run(["rm", "-rf", str(root)], check=False)
        if left:
            print("LEFT BEHIND:", left)


def fill(mountpoint: Path, size_gib: int) -> float:
    """Random data up to ~80 % of the share, written on the server; the GiB written."""
    count = int(size_gib * GIB * 0.8) // (4 << 20)
    subprocess.run(
        ["dd", "if=/dev/urandom", f"of={mountpoint / 'data'}", "bs=4M", f"count={count}"]
        + ["conv=fsync"],
        check=True,
        capture_output=True,
    )
    return count * (4 << 20) / GIB


async def through_mesh(rounds: int, size_gib: int) -> None:
    """The tenant's view: each call until its Operation is done."""
    with tempfile.TemporaryDirectory(prefix="bench-snapshots-mesh-") as tmp:
        config = Path(tmp) / "mesh.toml"
        config.write_text(
            '[[backends]]\nname = "local"\n[backends.options]\n'
            f"capacity_gib = {size_gib * (2 * rounds + 4)}\n"
        )
        async with LocalMesh(Path(tmp) / "state", config, api_port=0) as mesh:
            async with Client(mesh.api_address, mesh.admin_token) as c:

                async def done(call: Awaitable[object], kind: type) -> tuple[object, float]:
                    started = time.monotonic()
                    result = await c.wait(await call, kind)  # type: ignore[arg-type]
                    return result, time.monotonic() - started

                share, _ = await done(
                    c.call(
                        c.shares.CreateShare,
                        ss.CreateShareRequest(
                            parent="projects/bench",
                            share_id="full",
                            share=share_pb2.Share(size_gib=size_gib),
                        ),
                    ),
                    share_pb2.Share,
                )
                pool = Path(tmp) / "state" / "pools" / "local"
                written = await asyncio.to_thread(fill, pool / "mnt" / share.uid, size_gib)  # type: ignore[attr-defined]
                image = pool / "images" / f"{share.uid}.img"  # type: ignore[attr-defined]
                print(f"through the mesh: {size_gib} GiB share, {written:.2f} GiB of data")
                snaps, clones, reverts, copies = [], [], [], []
                snap_space, clone_space = [], []
                for n in range(rounds):
                    before = used_bytes(pool)
                    taken, took = await done(
                        c.call(
                            c.shares.CreateSnapshot,
                            ss.CreateSnapshotRequest(
                                parent=share.name,  # type: ignore[attr-defined]
                                snapshot_id=f"s{n}",
                                snapshot=snapshot_pb2.Snapshot(),
                            ),
                        ),
                        snapshot_pb2.Snapshot,
                    )
                    snaps.append(took)
                    snap_space.append(used_bytes(pool) - before)
                    before = used_bytes(pool)
                    clone, took = await done(
                        c.call(
                            c.shares.CreateShare,
                            ss.CreateShareRequest(
                                parent="projects/bench",
                                share_id=f"clone-{n}",
                                share=share_pb2.Share(source_snapshot=taken.name),  # type: ignore[attr-defined]
                            ),
                        ),
                        share_pb2.Share,
                    )
                    clones.append(took)
                    clone_space.append(used_bytes(pool) - before)
                    _, took = await done(
                        c.call(
                            c.shares.RevertShare,
                            ss.RevertShareRequest(name=share.name, snapshot=taken.name),  # type: ignore[attr-defined]
                        ),
                        share_pb2.Share,
                    )
                    reverts.append(took)
                    await c.wait(
                        await c.call(c.shares.DeleteShare, ss.DeleteShareRequest(name=clone.name))  # type: ignore[attr-defined]
                    )
                    await c.wait(
                        await c.call(
                            c.shares.DeleteSnapshot,
                            ss.DeleteSnapshotRequest(name=taken.name),  # type: ignore[attr-defined]
                        )
                    )
                    copy = pool / "images" / f".baseline-{n}"
                    copies.append(await asyncio.to_thread(full_copy, image, copy))
                    copy.unlink()
                baseline = statistics.median(copies)
                print(f"{'':34} {'median':>10}      baseline (median of {rounds})")
                full_bytes, share_bytes = image.stat().st_blocks * 512, size_gib * GIB
                line("CreateSnapshot to READY", statistics.median(snaps), baseline)
                line("  pool space per snapshot", statistics.median(snap_space), full_bytes, "MiB")
                print(f"  = {100 * statistics.median(snap_space) / share_bytes:.3f} % of the share")
                line("CreateShare from it to ACTIVE", statistics.median(clones), baseline)
                line("  pool space per clone", statistics.median(clone_space), full_bytes, "MiB")
                line("RevertShare to ACTIVE", statistics.median(reverts), baseline)
                print(
                    "all rounds (ms): snapshot",
                    [round(t * 1000) for t in snaps],
                    "clone",
                    [round(t * 1000) for t in clones],
                    "revert",
                    [round(t * 1000) for t in reverts],
                )
                await c.wait(
                    await c.call(c.shares.DeleteShare, ss.DeleteShareRequest(name=share.name))  # type: ignore[attr-defined]
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size-gib", type=int, default=1)
    parser.add_argument("--no-mesh", dest="mesh", action="store_false")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args.rounds, args.size_gib))
    if args.mesh:
        asyncio.run(through_mesh(args.rounds, args.size_gib))
