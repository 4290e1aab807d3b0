"""Control-plane scale benchmark: a real local mesh holding N share records.

For each N it starts a fresh mesh (etcd, the four services, the local backend's
Ganesha), writes N share records straight into etcd for a backend that does not exist
(so nothing is realized), spread over a few projects with one big project, and reports:

- ListShares through the real gRPC API (admin, page_size 50): p50/p99 of the big
  project's first page and of a page from the middle of it;
- the CPU of every process over an idle period (utime+stime from /proc/<pid>/stat, reaped
  children included), their resident memory (VmRSS), and the requests etcd answered
  meanwhile, per minute (from its metrics: what the idle mesh asks of it);
- a baseline from the same run: a range read of one etcd key, and the ratio of each N's
  first page to the first N's.

Every N's mesh is up at once: their samples take turns and their idle period is one, so
a change in this machine's speed (it shares its cores) falls on every N alike.

    .venv/bin/python bench/bench_scale.py [--n 1000 10000 100000] [--idle 60] [--samples 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The mesh's children are forked while the bench's gRPC threads run: that is fine here.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from sharemesh.runtime import lifecycle, page_tokens  # noqa: E402, I001 - the runtime first, as in the tests
from sharemesh.client import Client  # noqa: E402
from sharemesh.launcher import LocalMesh  # noqa: E402
from sharemesh.runtime.coordination import Store, connect, keys  # noqa: E402
from sharemesh.runtime.coordination._client import get_kv  # noqa: E402
from sharemesh.state.v1 import records_pb2  # noqa: E402
from sharemesh.v1 import share_pb2  # noqa: E402
from sharemesh.v1 import share_service_pb2 as ss  # noqa: E402

from bench_shares import etcd_requests  # noqa: E402 - beside this script

SMALL_PROJECTS = 4  # each holds 5 % of the records; "big" holds the rest
PUTS_PER_TXN = 100  # etcd's default --max-txn-ops is 128
IN_FLIGHT = 16
PAGE = 50
PROCESSES = ("etcd", "api", "scheduler", "driver-host-local", "gateway", "ganesha")


@dataclass
class Result:
    n: int
    first: list[float] = field(default_factory=list)
    deep: list[float] = field(default_factory=list)
    etcd_get: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    rss: dict[str, float] = field(default_factory=dict)
    idle: float = 0.0
    idle_requests: dict[str, float] = field(default_factory=dict)
    write_seconds: float = 0.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process and of the children it has reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pids(mesh: LocalMesh) -> dict[str, int]:
    found = {name: child.pid or 0 for name, child in mesh.children.items()}
    assert mesh.etcd is not None and mesh.etcd.pid
    found["etcd"] = mesh.etcd.pid
    ganesha = mesh.state_dir / "pools/local/ganesha/ganesha/ganesha.pid"
    if ganesha.exists():
        found["ganesha"] = int(ganesha.read_text())
    return found


def spread(n: int) -> dict[str, int]:
    """Records per project: a few small projects and one big one."""
    small = n // 20
    counts = {f"small{i}": small for i in range(SMALL_PROJECTS)}
    counts["big"] = n - small * SMALL_PROJECTS
    return counts


def share_record(project: str, index: int) -> tuple[str, records_pb2.ShareRecord]:
    name = f"projects/{project}/shares/s{index:07d}"
    record = records_pb2.ShareRecord(project=project)
    share = record.spec.share
    share.name, share.uid, share.size_gib = name, uuid.uuid4().hex, 1
    share.protocol, share.share_type = share_pb2.Share.NFS, "shareTypes/default"
    lifecycle.share.requested(record)
    lifecycle.share.placed(
        record,
        backend="backends/ghost",
        pool="backends/ghost/pools/p",
        export_id=0,
        thick=False,
        availability_zone="",
    )
    lifecycle.share.realized(record)
    return name, record


async def write_records(store: Store, n: int) -> None:
    """N records in batched transactions, IN_FLIGHT at a time."""
    batches: list[list[tuple[str, records_pb2.ShareRecord]]] = [[]]
    for project, count in spread(n).items():
        for i in range(count):
            if len(batches[-1]) == PUTS_PER_TXN:
                batches.append([])
            batches[-1].append(share_record(project, i))
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def commit(batch: list[tuple[str, records_pb2.ShareRecord]]) -> None:
        async with gate:
            txn = store.txn()
            for name, record in batch:
                txn.put(store.key_of(name), record)
            await txn.commit()

    await asyncio.gather(*(commit(b) for b in batches))


@dataclass
class Subject:
    """One mesh holding N records, up for the whole run, and the calls timed on it."""

    result: Result
    mesh: LocalMesh
    client: Client
    etcd: Any
    store: Store
    first: ss.ListSharesRequest
    deep: ss.ListSharesRequest


async def bring_up(n: int, index: int, tmp: Path, stack: contextlib.AsyncExitStack) -> Subject:
    """A mesh with N records written, its api's cache warm."""
    result = Result(n)
    config = tmp / f"mesh-{n}.toml"
    # Meshes side by side: each gateway gets storage addresses of its own.
    config.write_text(
        '[[backends]]\nname = "local"\n[backends.options]\ncapacity_gib = 8\n'
        f'[gateway]\nstorage_range = "169.254.{70 + index}.0/24"\n'
    )
    mesh = await stack.enter_async_context(LocalMesh(tmp / f"state-{n}", config, api_port=0))
    assert mesh.etcd is not None
    etcd = await stack.enter_async_context(connect(mesh.etcd.endpoint))
    client = await stack.enter_async_context(Client(mesh.api_address, mesh.admin_token))
    store = Store(etcd)
    started = time.perf_counter()
    await write_records(store, n)
    result.write_seconds = time.perf_counter() - started
    parent = "projects/big"
    first = ss.ListSharesRequest(parent=parent, page_size=PAGE)
    await client.call(client.shares.ListShares, first)  # makes the token secret
    # A token for the middle of the big project, sealed as the api seals its own.
    prefix = store.prefix_of(parent, "shares")
    middle = f"s{spread(n)['big'] // 2:07d}"
    _, revision = await get_kv(etcd, keys.page_token_secret_key(store.root))
    tokens = await page_tokens.load(store)
    token = tokens.issue(page_tokens.binding(prefix, ""), page_tokens.Position(middle, revision))
    deep = ss.ListSharesRequest(parent=parent, page_size=PAGE, page_token=token)
    for request in (first, deep):  # warm: the api's cache has caught up
        page = await client.call(client.shares.ListShares, request, timeout=120)
        assert len(page.shares) == PAGE, len(page.shares)
    return Subject(result, mesh, client, etcd, store, first, deep)


async def timed(took: list[float], call: Coroutine[Any, Any, object]) -> None:
    started = time.perf_counter()
    await call
    took.append(time.perf_counter() - started)


async def sample(subjects: list[Subject], samples: int) -> None:
    """Every N's calls in turn, sample after sample: a change in the machine's speed
    (it shares its cores) falls on every N alike, rather than on whichever ran then."""
    for _ in range(samples):
        for s in subjects:
            r, secret = s.result, keys.page_token_secret_key(s.store.root)
            await timed(r.first, s.client.call(s.client.shares.ListShares, s.first))
            await timed(r.deep, s.client.call(s.client.shares.ListShares, s.deep))
            await timed(r.etcd_get, get_kv(s.etcd, secret))


async def idle(subjects: list[Subject], args: argparse.Namespace) -> None:
    """Every mesh's processes over one idle period, after the writes have settled."""
    await asyncio.sleep(args.settle)
    running = [pids(s.mesh) for s in subjects]
    before = [{name: cpu_seconds(pid) for name, pid in p.items()} for p in running]
    requests = [etcd_requests(s.mesh.etcd.metrics_url) for s in subjects]  # type: ignore[union-attr]
    started = time.perf_counter()
    await asyncio.sleep(args.idle)
    took = time.perf_counter() - started
    for s, p, b, asked in zip(subjects, running, before, requests, strict=True):
        r = s.result
        r.idle = took
        r.cpu = {name: cpu_seconds(pid) - b[name] for name, pid in p.items()}
        spent = etcd_requests(s.mesh.etcd.metrics_url) - asked  # type: ignore[union-attr]
        r.idle_requests = {m: n * 60 / took for m, n in sorted(spent.items())}
        r.rss = {name: rss_mb(pid) for name, pid in p.items()}


def report(results: list[Result]) -> None:
    base = results[0]
    print()
    print(
        f"{'N':>8} | {'first page p50/p99 ms':>22} | {'deep page p50/p99 ms':>21} | "
        f"{'etcd get p50/p99 ms':>20} | {'first p99 / N0':>14} | write s"
    )
    for r in results:
        ms = lambda v, q: pct(v, q) * 1000  # noqa: E731
        print(
            f"{r.n:>8} | {ms(r.first, 0.5):9.1f} / {ms(r.first, 0.99):9.1f} | "
            f"{ms(r.deep, 0.5):8.1f} / {ms(r.deep, 0.99):9.1f} | "
            f"{ms(r.etcd_get, 0.5):7.2f} / {ms(r.etcd_get, 0.99):9.2f} | "
            f"{pct(r.first, 0.99) / pct(base.first, 0.99):13.2f}x | {r.write_seconds:6.1f}"
        )
    print()
    names = [p for p in PROCESSES if any(p in r.cpu for r in results)]
    print(f"{'N':>8} | idle s | " + " | ".join(f"{p:>17}" for p in names) + " |   total % core")
    for r in results:
        cells = [f"{r.cpu.get(p, 0):6.2f}s {r.rss.get(p, 0):6.1f}MB" for p in names]
        total = sum(r.cpu.values()) / r.idle * 100
        print(f"{r.n:>8} | {r.idle:6.1f} | " + " | ".join(cells) + f" | {total:8.2f} %")
    print("(CPU seconds over the idle period, and resident memory, per process)")
    for r in results:
        asked = "  ".join(f"{m} {n:.0f}" for m, n in r.idle_requests.items())
        print(f"{r.n:>8} | etcd requests per idle minute: {asked}")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="sharemesh-scale-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            subjects = []
            for index, n in enumerate(args.n):
                print(f"N = {n}: starting a mesh and writing its records ...", flush=True)
                subjects.append(await bring_up(n, index, Path(tmp), stack))
            print(f"timing {args.samples} samples of each call, the meshes in turn ...")
            await sample(subjects, args.samples)
            print(f"measuring {args.idle:.0f} idle seconds of every mesh at once ...")
            await idle(subjects, args)
        report([s.result for s in subjects])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--idle", type=float, default=60.0, help="idle seconds measured")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before idle")
    parser.add_argument("--samples", type=int, default=200)
    sys.exit(asyncio.run(main(parser.parse_args())))
