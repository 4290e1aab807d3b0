"""The three backends side by side, in one run and one mesh: `local` (XFS loop images),
`cephfs` (a one-node dev cluster, `scripts/dev-ceph`) and `glusterfs` (a one-brick dev
volume, `scripts/dev-gluster`), each behind its own driver-host and Ganesha. Share
types (by the operator's `backend_kind` capability) place each share.

Prints per backend, each beside the local backend's figure (the baseline) with their
ratio:

- create-to-ACTIVE latency through the API (median and p90 of N creates, 1 GiB each);
- NFS write throughput (nfs-cp of a file over v3) and read throughput (over v4);
- CreateSnapshot to READY and CreateShare from it to ACTIVE, where the backend offers
  them (local: reflink copies; cephfs: subvolume snapshots and clones, the clone copying
  the data stored);
- DeleteShare to done (median and p90 of N);
- the stop of the backend's driver-host with its Ganesha, and then of the rest of the
  mesh (api, scheduler, gateway, etcd).

It prints figures, never asserts them. Everything it makes is removed at the end, the
dev cluster and volume with it.

    .venv/bin/python bench/bench_backends.py [--creates 5] [--size-mib 256] [--rounds 2]
"""

from __future__ import annotations

# isort: off
# First, before anything imports grpc: the runtime turns off gRPC's fork handlers, which
# crash the children an in-process launcher forks (as in tests/conftest.py).
import sharemesh.runtime  # noqa: F401

# isort: on
import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

HERE = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(HERE / "tests"), str(HERE / "tests" / "e2e")]

from sharemesh.client import Client  # noqa: E402
from sharemesh.launcher import LocalMesh  # noqa: E402
from sharemesh.v1 import share_service_pb2 as ss  # noqa: E402
from sharemesh.v1 import snapshot_pb2  # noqa: E402

from mesh_ops import (  # noqa: E402
    RW,
    Share,
    create_share_types,
    delete_share,
    grant,
    read,
    three_backends,
    write,
)
from support import ensure_rpcbind, loops_under, mounts_under, processes_mentioning  # noqa: E402

BACKENDS = ("local", "ceph", "gluster")
SNAPSHOTS = ("local", "ceph")  # the backends that offer snapshots and clones
MIB = 1 << 20
T = TypeVar("T")


def dev(script: str, verb: str, home: Path) -> str:
    """Runs `scripts/dev-ceph` or `scripts/dev-gluster`; what it printed."""
    done = subprocess.run(
        [str(HERE / "scripts" / script), verb, str(home)],
        capture_output=True,
        text=True,
        timeout=300,
        check=verb == "up",
    )
    return done.stdout.strip()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def timed(call: Callable[[], Awaitable[T]]) -> tuple[float, T]:
    started = time.monotonic()
    result = await call()
    return time.monotonic() - started, result


async def create(client: Client, share_id: str, backend: str, source: str = "") -> Share:
    op = await client.call(
        client.shares.CreateShare,
        ss.CreateShareRequest(
            parent="projects/alpha",
            share_id=share_id,
            share=Share(
                size_gib=1,
                share_type="" if source else f"shareTypes/on-{backend}",
                source_snapshot=source,
            ),
        ),
    )
    return await client.wait(op, Share)


async def snapshot(client: Client, share: str, snapshot_id: str) -> snapshot_pb2.Snapshot:
    op = await client.call(
        client.shares.CreateSnapshot,
        ss.CreateSnapshotRequest(
            parent=share, snapshot_id=snapshot_id, snapshot=snapshot_pb2.Snapshot()
        ),
    )
    return await client.wait(op, snapshot_pb2.Snapshot)


async def nfs_copy(call: Callable[[], Awaitable[tuple[int, str]]], size: int, what: str) -> float:
    """MiB/s of one nfs-cp."""
    took, (code, out) = await timed(call)
    if code != 0:
        raise RuntimeError(f"{what} failed: {out}")
    return size / MIB / took


class Figures:
    """Samples by (measure, backend); printed as a table beside the local backend's."""

    def __init__(self) -> None:
        self.samples: dict[tuple[str, str], list[float]] = {}

    def add(self, measure: str, backend: str, value: float) -> None:
        self.samples.setdefault((measure, backend), []).append(value)

    def table(self, rows: list[tuple[str, str, str]]) -> None:
        """rows: (label, measure, unit) with unit `ms`, `s` or `MiB/s`; ratios are each
        backend's figure over local's (above 1: slower for times, faster for MiB/s)."""
        print(f"{'':38}" + "".join(f"{b:>24}" for b in BACKENDS))
        for label, measure, unit in rows:
            for stat in ("median", "p90") if unit == "ms" else ("median",):
                cells = []
                base = self._stat(measure, "local", stat)
                for backend in BACKENDS:
                    value = self._stat(measure, backend, stat)
                    if value is None:
                        cells.append(f"{'not offered':>24}")
                        continue
                    scaled = value * 1000 if unit == "ms" else value
                    ratio = f"({value / base:5.2f}x)" if base and backend != "local" else ""
                    cells.append(f"{scaled:11.1f} {unit:<6}{ratio:>7}")
                name = f"{label} {stat}" if unit == "ms" else label
                print(f"{name:<38}" + "".join(cells))

    def _stat(self, measure: str, backend: str, stat: str) -> float | None:
        values = self.samples.get((measure, backend))
        if not values:
            return None
        return statistics.median(values) if stat == "median" else pct(values, 0.9)


async def measure(mesh: LocalMesh, figures: Figures, args: argparse.Namespace, tmp: Path) -> None:
    data = tmp / "data.bin"
    with open(data, "wb") as f:
        for _ in range(args.size_mib):
            f.write(os.urandom(MIB))
    size = args.size_mib * MIB
    back = tmp / "back.bin"
    async with Client(mesh.api_address, mesh.admin_token) as admin:
        await create_share_types(admin, {f"on-{b}": {"backend_kind": b} for b in BACKENDS})
    async with Client(mesh.api_address, "alpha-key") as alpha:
        shares: dict[str, list[Share]] = {b: [] for b in BACKENDS}
        # Interleaved, so a slow moment of the host does not fall on one backend alone.
        for n in range(args.creates):
            for backend in BACKENDS:
                took, share = await timed(lambda: create(alpha, f"{backend}-{n}", backend))
                figures.add("create", backend, took)
                shares[backend].append(share)
        for backend in BACKENDS:
            share = shares[backend][0]
            await grant(alpha, share.name, "127.0.0.1", RW)
            for n in range(args.rounds):
                figures.add(
                    "write",
                    backend,
                    await nfs_copy(lambda: write(share, data, f"d{n}.bin"), size, "write"),
                )
                figures.add(
                    "read",
                    backend,
                    await nfs_copy(lambda: read(share, back, f"d{n}.bin", 4), size, "read"),
                )
            back.unlink(missing_ok=True)
            if backend not in SNAPSHOTS:
                continue
            for n in range(args.rounds):
                took, taken = await timed(lambda: snapshot(alpha, share.name, f"s{n}"))
                figures.add("snapshot", backend, took)
                took, clone = await timed(lambda: create(alpha, f"{backend}-c{n}", "", taken.name))
                figures.add("clone", backend, took)
                await delete_share(alpha, clone.name)
                await alpha.wait(
                    await alpha.call(
                        alpha.shares.DeleteSnapshot, ss.DeleteSnapshotRequest(name=taken.name)
                    )
                )
        for n in range(args.creates):
            for backend in BACKENDS:
                took, _ = await timed(lambda: delete_share(alpha, shares[backend][n].name))
                figures.add("delete", backend, took)
    for backend in BACKENDS:
        took, _ = await timed(mesh.children[f"driver-host-{backend}"].stop)
        figures.add("stop", backend, took)


async def main(args: argparse.Namespace) -> None:
    ensure_rpcbind()
    root = Path(tempfile.mkdtemp(prefix="bench-backends-"))
    state = root / "mesh"
    rest_of_stop = float("nan")
    figures = Figures()
    try:
        started = time.monotonic()
        conf, keyring = dev("dev-ceph", "up", root / "ceph").split()
        volume = dev("dev-gluster", "up", root / "gluster")
        print(f"dev cluster and volume up in {time.monotonic() - started:.1f}s")
        state.mkdir()
        (state / "mesh.toml").write_text(
            three_backends(
                conf,
                keyring,
                volume,
                local_gib=args.creates + args.rounds + 2,
                group="bench",
                ceph_ratio=4.0,  # quotas are thin; the dev OSD has 5 GiB
            )
        )
        mesh = LocalMesh(state, state / "mesh.toml", api_port=0, lease_ttl_seconds=3)
        try:
            await mesh.start()
            await measure(mesh, figures, args, root)
        finally:
            rest_of_stop, _ = await timed(mesh.stop)
    finally:
        dev("dev-gluster", "down", root / "gluster")
        dev("dev-ceph", "down", root / "ceph")
        left = mounts_under(root) + loops_under(root) + processes_mentioning(str(root))
        subprocess.run(["rm", "-rf", str(root)], check=False)
        if left:
            print("LEFT BEHIND:", left)
    print(
        f"\n{args.creates} creates and deletes per backend (1 GiB shares), "
        f"{args.rounds} rounds of {args.size_mib} MiB I/O and of snapshot + clone; "
        "ratios: the backend's figure over local's"
    )
    figures.table(
        [
            ("create to ACTIVE", "create", "ms"),
            ("NFS write, v3 (nfs-cp)", "write", "MiB/s"),
            ("NFS read, v4 (nfs-cp)", "read", "MiB/s"),
            ("snapshot to READY", "snapshot", "ms"),
            ("clone to ACTIVE", "clone", "ms"),
            ("delete to done", "delete", "ms"),
            ("driver-host + Ganesha stop", "stop", "s"),
        ]
    )
    print(f"{'rest of the mesh stop':<38}{rest_of_stop:11.2f} s (api, scheduler, gateway, etcd)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=5, help="shares created per backend")
    parser.add_argument("--size-mib", type=int, default=256, help="the file written and read")
    parser.add_argument("--rounds", type=int, default=2, help="I/O and snapshot rounds")
    asyncio.run(main(parser.parse_args()))
