"""Driver-host restart at scale on a real local mesh (etcd, services, Ganesha, XFS loops).

Builds N real shares (each an XFS image on a loop device, exported by Ganesha, with a
127.0.0.1 read-write rule), then kills with SIGKILL

  (a) the driver-host alone: Ganesha keeps serving; the launcher restarts the process,
      which re-checks every export and registers again;
  (b) the driver-host and its Ganesha together: every export must be applied again.

and reports the time from the kill until every share serves again: the new driver-host
has registered (its backend record is written anew, which it does only once every ACTIVE
share was ensured), Ganesha's `ShowExports` lists every share's export id, and a random
sample of shares answers over NFS (`nfs-ls` of the share's root, as a client would). It
also reports the new driver-host's CPU until then, whether NFS stopped answering during
(a), and the ratio to the same restarts measured earlier in the same run with a small
baseline of shares. The mesh is stopped at the end and the host checked clean.

    .venv/bin/python bench/bench_restart.py [--shares 1000] [--baseline 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(HERE)]

# isort: off
# First, before anything imports grpc: children the in-process launcher forks crash
# unless the runtime turned off gRPC's fork handlers (see tests/conftest.py).
import sharemesh.runtime  # noqa: E402,F401
from sharemesh.client import Client  # noqa: E402
from sharemesh.ganesha import GaneshaInstance  # noqa: E402
from sharemesh.launcher import LocalMesh  # noqa: E402
from sharemesh.runtime.coordination import Store, connect, keys  # noqa: E402
from sharemesh.state.v1 import records_pb2  # noqa: E402
from sharemesh.v1 import access_rule_pb2, share_pb2  # noqa: E402
from sharemesh.v1 import share_service_pb2 as ss  # noqa: E402
from support import assert_host_clean, ensure_rpcbind, pid_alive, run  # noqa: E402

# isort: on

DRIVER_HOST = "driver-host-local"
GANESHA_DIR = "pools/local/ganesha/ganesha"
SETTLED_SECONDS = 6.0
"""Uptime before a kill: the launcher restarts a child that ran over 5 s after 0.5 s, one
that died younger after a doubling backoff (a crash loop), which is not what we measure."""


@dataclass
class Recovery:
    registered: float
    """Seconds from the kill until the new driver-host wrote its registration."""
    exported: float
    """… until Ganesha's ShowExports lists every share's export id."""
    served: float
    """… until all of the above and every sampled share answered over NFS."""
    cpu: float
    """CPU seconds of the new driver-host (and what it reaped) from its start to `served`."""
    nfs_failures: int
    """Reads of a probe share that failed between the kill and `served`."""


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of the children it has reaped (mkfs, losetup, …)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def uptime(pid: int) -> float:
    started = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return time.clock_gettime(time.CLOCK_BOOTTIME) - started / os.sysconf("SC_CLK_TCK")


def nfs_root(share: share_pb2.Share) -> str:
    location = share.export_locations[0]
    host, pseudo = location.path.split(":", 1)
    return (
        f"nfs://{host}{pseudo}?version=3&nfsport={location.nfs_port}"
        f"&mountport={location.mount_port}"
    )


async def readable(share: share_pb2.Share) -> bool:
    code, _ = await run("nfs-ls", nfs_root(share), timeout=10)
    return code == 0


async def build(
    client: Client, start: int, stop: int, concurrency: int
) -> tuple[list[share_pb2.Share], float]:
    """Shares `start`..`stop` (exclusive), each ACTIVE with a 127.0.0.1 RW rule; and the
    rate, shares (with their rule) per second."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> share_pb2.Share:
        async with gate:
            op = await client.call(
                client.shares.CreateShare,
                ss.CreateShareRequest(
                    parent="projects/bench", share_id=f"r-{i}", share=share_pb2.Share(size_gib=1)
                ),
            )
            share = await client.wait(op, share_pb2.Share)
            assert share is not None and share.state == share_pb2.Share.ACTIVE, share
            op = await client.call(
                client.shares.CreateAccessRule,
                ss.CreateAccessRuleRequest(
                    parent=share.name,
                    access_rule=access_rule_pb2.AccessRule(
                        access_to="127.0.0.1", access_level=access_rule_pb2.AccessRule.READ_WRITE
                    ),
                ),
            )
            await client.wait(op, access_rule_pb2.AccessRule)
            return share

    started = time.perf_counter()
    made = await asyncio.gather(*(one(i) for i in range(start, stop)))
    return list(made), (stop - start) / (time.perf_counter() - started)


async def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while pid_alive(pid):
        await asyncio.sleep(0.01)


async def restart(
    mesh: LocalMesh,
    store: Store,
    shares: list[share_pb2.Share],
    export_ids: set[int],
    with_ganesha: bool,
    sample: int,
    timeout: float,
) -> Recovery:
    child = mesh.children[DRIVER_HOST]
    async with asyncio.timeout(60):  # a restart from an earlier round has settled
        while not (child.pid and pid_alive(child.pid) and uptime(child.pid) > SETTLED_SECONDS):
            await asyncio.sleep(0.1)
    old_pid = child.pid
    ganesha = GaneshaInstance(mesh.state_dir / GANESHA_DIR, 0, 0)
    ganesha_pid = int((mesh.state_dir / GANESHA_DIR / "ganesha.pid").read_text())
    backend_key = keys.backend_key(store.root, "local")

    killed = time.monotonic()
    await asyncio.gather(kill(old_pid), *([kill(ganesha_pid)] if with_ganesha else []))
    before = await store.get(backend_key, records_pb2.BackendRecord)
    assert before is not None, "the backend was not registered before the kill"

    probe = random.choice(shares)
    failures = 0
    done = asyncio.Event()

    async def watch_nfs() -> None:
        nonlocal failures
        while not done.is_set():
            failures += not await readable(probe)
            await asyncio.sleep(0.2)

    async def registered() -> float:
        while True:
            found = await store.get(backend_key, records_pb2.BackendRecord)
            if found is not None and found.mod_revision > before.mod_revision:
                return time.monotonic() - killed
            await asyncio.sleep(0.05)

    async def exported() -> float:
        while True:
            with contextlib.suppress(Exception):  # Ganesha or its bus is still away
                if export_ids <= await ganesha.live_export_ids():
                    return time.monotonic() - killed
            await asyncio.sleep(0.1)

    async def sampled() -> float:
        pending = random.sample(shares, min(sample, len(shares)))
        while pending:
            answers = await asyncio.gather(*(readable(s) for s in pending))
            pending = [s for s, ok in zip(pending, answers, strict=True) if not ok]
            if pending:
                await asyncio.sleep(0.1)
        return time.monotonic() - killed

    watcher = asyncio.create_task(watch_nfs())
    try:
        async with asyncio.timeout(timeout):
            t_registered, t_exported = await asyncio.gather(registered(), exported())
            t_sampled = await sampled()
    finally:
        done.set()
        await watcher
        ganesha.disconnect()
    new_pid = child.pid
    assert new_pid and new_pid != old_pid
    return Recovery(
        registered=t_registered,
        exported=t_exported,
        served=max(t_registered, t_exported, t_sampled),
        cpu=cpu_seconds(new_pid),
        nfs_failures=failures,
    )


def row(label: str, n: int, r: Recovery, base: Recovery | None) -> str:
    ratio = f"{r.served / base.served:5.2f}x" if base else "   - "
    return (
        f"| {label:<28} | {n:5} | {r.registered:6.2f} s | {r.exported:6.2f} s | "
        f"{r.served:6.2f} s | {ratio} | {r.cpu:6.2f} s | {r.nfs_failures:3} |"
    )


async def measure(
    mesh: LocalMesh,
    store: Store,
    shares: list[share_pb2.Share],
    args: argparse.Namespace,
) -> dict[str, list[Recovery]]:
    records = await store.scan(store.root + "shares/", records_pb2.ShareRecord)
    export_ids = {r.value.export_id for r in records}
    assert len(export_ids) == len(shares) and 0 not in export_ids, "export ids missing"
    results: dict[str, list[Recovery]] = {"driver-host": [], "driver-host + Ganesha": []}
    for _ in range(args.rounds):
        for label, with_ganesha in (("driver-host", False), ("driver-host + Ganesha", True)):
            results[label].append(
                await restart(
                    mesh, store, shares, export_ids, with_ganesha, args.sample, args.timeout
                )
            )
    return results


async def main(args: argparse.Namespace) -> int:
    ensure_rpcbind()
    # ShowExports while Ganesha is down is expected here, not worth a warning each poll.
    logging.getLogger("sharemesh.ganesha").setLevel(logging.ERROR)
    random.seed(args.seed)
    total = args.shares
    with tempfile.TemporaryDirectory(prefix="sharemesh-bench-restart-") as tmp:
        state = Path(tmp) / "state"
        config = Path(tmp) / "mesh.toml"
        # Images are sparse: the pool promises N GiB without holding them.
        config.write_text(
            '[[backends]]\nname = "local"\n[backends.options]\n'
            f"capacity_gib = {total + 16}\nmax_over_subscription_ratio = 2.0\n"
        )
        try:
            async with LocalMesh(state, config, api_port=0) as mesh:
                assert mesh.etcd is not None
                async with (
                    Client(mesh.api_address, mesh.admin_token) as client,
                    connect(mesh.etcd.endpoint) as etcd,
                ):
                    store = Store(etcd)
                    results: dict[int, dict[str, list[Recovery]]] = {}
                    shares: list[share_pb2.Share] = []
                    for n in (args.baseline, total):
                        made, rate = await build(client, len(shares), n, args.concurrency)
                        shares += made
                        print(
                            f"built {len(shares)} shares: {len(made)} more at "
                            f"{rate:.1f} shares (with their rule) per s, "
                            f"concurrency {args.concurrency}",
                            flush=True,
                        )
                        results[n] = await measure(mesh, store, shares, args)
                    print(
                        "\n| kill -9 of                   |     N | registered | exported |"
                        "   served | vs base | DH CPU   | NFS fails |"
                    )
                    print("|---|---|---|---|---|---|---|---|")
                    for n, by_label in results.items():
                        for label, rounds in by_label.items():
                            for i, r in enumerate(rounds):
                                base = results[args.baseline][label][i]
                                print(row(label, n, r, base if n != args.baseline else None))
        finally:
            assert_host_clean(state)
            print("host clean: no mount, loop device or process of the mesh left")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shares", type=int, default=1000)
    parser.add_argument("--baseline", type=int, default=10, help="shares in the baseline")
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2, help="restarts of each kind per N")
    parser.add_argument("--sample", type=int, default=20, help="shares read over NFS")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=9)
    sys.exit(asyncio.run(main(parser.parse_args())))
