"""Share lifecycle benchmark on a real local mesh (etcd, services, Ganesha, XFS loops).

Prints create-to-ACTIVE and delete latency (p50, p99) and throughput at several
concurrencies, the CPU of each process and the etcd requests (by method, from etcd's own
metrics) per create+delete, access-rule-to-mountable latency, etcd's own transaction
rate measured in the same run (the baseline), and each service's resident memory after
N creates, and the CPU time of a fixed workload measured in the same run (the CPU figures
over it compare across runs on a machine whose speed varies).

    .venv/bin/python bench/bench_shares.py [--creates 1000] [--concurrency 1 8 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from sharemesh.client import Client
from sharemesh.launcher import LocalMesh
from sharemesh.runtime.coordination import Store, connect
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import access_rule_pb2, share_pb2
from sharemesh.v1 import share_service_pb2 as ss

TXNS_PER_CREATE = 6  # api intent; placement; export id; lock; result; unlock


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def ms(values: list[float]) -> str:
    return f"p50 {pct(values, 0.5) * 1000:7.1f} ms   p99 {pct(values, 0.99) * 1000:7.1f} ms"


async def etcd_txn_rate(endpoint: str, concurrency: int, count: int = 2000) -> float:
    """Compare-and-put transactions per second, the shape of every mesh write."""
    async with connect(endpoint) as client:
        store = Store(client, "/bench-baseline/")
        keys = [f"/bench-baseline/k{i}" for i in range(concurrency)]
        revisions = {k: 0 for k in keys}
        record = records_pb2.PoolAllocation(allocated_gib=1)
        per_worker = count // concurrency

        async def worker(key: str) -> None:
            for _ in range(per_worker):
                txn = store.txn().put(key, record, revisions[key] or None)
                if not revisions[key]:
                    txn.check(key, 0)
                revisions[key] = await txn.commit()

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in keys))
        elapsed = time.perf_counter() - started
        for key in keys:
            await store.delete(key)
        return per_worker * concurrency / elapsed


async def create_and_delete(
    client: Client, prefix: str, count: int, concurrency: int
) -> tuple[list[float], list[float], float, float]:
    gate = asyncio.Semaphore(concurrency)
    creates: list[float] = []
    deletes: list[float] = []

    async def one_create(i: int) -> str:
        async with gate:
            started = time.perf_counter()
            op = await client.call(
                client.shares.CreateShare,
                ss.CreateShareRequest(
                    parent="projects/bench",
                    share_id=f"{prefix}-{i}",
                    share=share_pb2.Share(size_gib=1),
                ),
            )
            share = await client.wait(op, share_pb2.Share)
            assert share is not None and share.state == share_pb2.Share.ACTIVE
            creates.append(time.perf_counter() - started)
            return share.name

    async def one_delete(name: str) -> None:
        async with gate:
            started = time.perf_counter()
            await client.wait(
                await client.call(client.shares.DeleteShare, ss.DeleteShareRequest(name=name))
            )
            deletes.append(time.perf_counter() - started)

    started = time.perf_counter()
    names = await asyncio.gather(*(one_create(i) for i in range(count)))
    create_rate = count / (time.perf_counter() - started)
    started = time.perf_counter()
    await asyncio.gather(*(one_delete(n) for n in names))
    delete_rate = count / (time.perf_counter() - started)
    return creates, deletes, create_rate, delete_rate


async def access_to_mountable(client: Client, rounds: int) -> list[float]:
    op = await client.call(
        client.shares.CreateShare,
        ss.CreateShareRequest(
            parent="projects/bench", share_id="acl", share=share_pb2.Share(size_gib=1)
        ),
    )
    share = await client.wait(op, share_pb2.Share)
    assert share is not None
    location = share.export_locations[0]
    host, pseudo = location.path.split(":", 1)
    url = f"nfs://{host}{pseudo}?version=3&nfsport={location.nfs_port}&mountport={location.mount_port}"
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        op = await client.call(
            client.shares.CreateAccessRule,
            ss.CreateAccessRuleRequest(
                parent=share.name,
                access_rule=access_rule_pb2.AccessRule(
                    access_to="127.0.0.1", access_level=access_rule_pb2.AccessRule.READ_WRITE
                ),
            ),
        )
        rule = await client.wait(op, access_rule_pb2.AccessRule)
        while subprocess.run(["nfs-ls", url], capture_output=True).returncode != 0:
            await asyncio.sleep(0.005)
        timings.append(time.perf_counter() - started)
        assert rule is not None
        await client.wait(
            await client.call(
                client.shares.DeleteAccessRule, ss.DeleteAccessRuleRequest(name=rule.name)
            )
        )
    await client.wait(
        await client.call(client.shares.DeleteShare, ss.DeleteShareRequest(name=share.name))
    )
    return timings


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of the children it has reaped (mkfs, losetup, …)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def cpu_by_service(mesh: LocalMesh) -> dict[str, float]:
    usage = {name: cpu_seconds(child.pid or 0) for name, child in mesh.children.items()}
    assert mesh.etcd is not None and mesh.etcd.pid
    usage["etcd"] = cpu_seconds(mesh.etcd.pid)
    ganesha = mesh.state_dir / "pools/local/ganesha/ganesha/ganesha.pid"
    usage["ganesha"] = cpu_seconds(int(ganesha.read_text()))
    return usage


_HANDLED = re.compile(r'^grpc_server_handled_total\{[^}]*grpc_method="(\w+)"[^}]*\} (\d+)', re.M)
_COMMITTED = re.compile(r"^etcd_server_proposals_committed_total (\S+)", re.M)


def etcd_requests(endpoint: str) -> Counter[str]:
    """etcd's own count of the requests it answered, by gRPC method, and of the raft
    proposals it committed (its writes), read from its metrics."""
    with urllib.request.urlopen(f"{endpoint}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for method, count in _HANDLED.findall(text):
        counts[method] += int(count)
    committed = _COMMITTED.search(text)
    counts["(writes committed)"] = int(float(committed.group(1))) if committed else 0
    return counts


def calibration_ms(rounds: int = 3) -> float:
    """The CPU time of a fixed workload of the kind the services do (protobuf records
    built, written and read back; dicts; strings), the fastest of `rounds`: the same-run
    baseline for CPU figures. This machine's CPU speed varies by a fifth from run to run
    (it shares its cores), and every process's CPU time with it."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        index: dict[str, int] = {}
        for i in range(16000):
            record = records_pb2.ShareRecord(project="bench", export_id=i)
            record.spec.share.name = f"projects/bench/shares/s{i}"
            record.spec.share.size_gib = i % 7 + 1
            record.status.export_locations.add().path = f"/exports/s{i}"
            copy = records_pb2.ShareRecord.FromString(record.SerializeToString())
            index[copy.spec.share.name] = copy.export_id
        best = min(best, time.process_time() - started)
    return best * 1000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="sharemesh-bench-") as tmp:
        config = Path(tmp) / "mesh.toml"
        config.write_text(
            '[[backends]]\nname = "local"\n[backends.options]\n'
            f"capacity_gib = {args.creates + 4 * max(args.per_level, *args.concurrency) + 16}\n"
        )
        async with LocalMesh(Path(tmp) / "state", config, api_port=0) as mesh:
            assert mesh.etcd is not None
            async with Client(mesh.api_address, mesh.admin_token) as client:
                base1 = await etcd_txn_rate(mesh.etcd.endpoint, 1)
                base32 = await etcd_txn_rate(mesh.etcd.endpoint, 32)
                print(
                    f"etcd baseline: {base1:7.0f} txn/s sequential, {base32:7.0f} txn/s at 32 "
                    f"in flight -> creates it allows at {TXNS_PER_CREATE} txn each: "
                    f"{base1 / TXNS_PER_CREATE:.0f}/s and {base32 / TXNS_PER_CREATE:.0f}/s"
                )
                unit = calibration_ms()
                for concurrency in args.concurrency:
                    count = max(args.per_level, concurrency * 4)
                    before = cpu_by_service(mesh)
                    requests = etcd_requests(mesh.etcd.metrics_url)
                    creates, deletes, create_rate, delete_rate = await create_and_delete(
                        client, f"c{concurrency}", count, concurrency
                    )
                    after = cpu_by_service(mesh)
                    requests = etcd_requests(mesh.etcd.metrics_url) - requests
                    per_share = "  ".join(
                        f"{name} {(after[name] - before[name]) / count * 1000:.0f}"
                        for name in after
                    )
                    total = sum(after[name] - before[name] for name in after) / count * 1000
                    # Before and after: the machine's speed drifts within a run too.
                    unit = (unit + calibration_ms()) / 2
                    print(f"  calibration (same-run CPU baseline): a fixed workload {unit:.0f} ms")
                    print(
                        f"  CPU ms per create+delete: {per_share}  (total {total:.0f}; "
                        f"{total / unit:.2f}x the calibration)"
                    )
                    per_etcd = "  ".join(
                        f"{method} {n / count:.1f}" for method, n in sorted(requests.items())
                    )
                    print(f"  etcd requests per create+delete: {per_etcd}")
                    allowed = (base1 if concurrency == 1 else base32) / TXNS_PER_CREATE
                    print(
                        f"concurrency {concurrency:3}  n={count:4}  create {ms(creates)}  "
                        f"{create_rate:6.1f}/s ({create_rate / allowed:.2f} of etcd-allowed)  "
                        f"delete {ms(deletes)}  {delete_rate:6.1f}/s"
                    )
                acl = await access_to_mountable(client, args.access_rounds)
                print(f"access rule to mountable: {ms(acl)}  (n={len(acl)})")

                started = time.perf_counter()
                gate = asyncio.Semaphore(32)

                async def create(i: int) -> None:
                    async with gate:
                        op = await client.call(
                            client.shares.CreateShare,
                            ss.CreateShareRequest(
                                parent="projects/bench",
                                share_id=f"rss-{i}",
                                share=share_pb2.Share(size_gib=1),
                            ),
                        )
                        await client.wait(op)

                await asyncio.gather(*(create(i) for i in range(args.creates)))
                took = time.perf_counter() - started
                memory = "  ".join(
                    f"{name} {rss_mb(child.pid or 0):6.1f} MB"
                    for name, child in mesh.children.items()
                )
                print(f"after {args.creates} creates ({took:.0f}s): resident memory: {memory}")
                names = [f"projects/bench/shares/rss-{i}" for i in range(args.creates)]

                async def delete(name: str) -> None:
                    async with gate:
                        await client.wait(
                            await client.call(
                                client.shares.DeleteShare, ss.DeleteShareRequest(name=name)
                            )
                        )

                await asyncio.gather(*(delete(n) for n in names))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--creates", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--per-level", type=int, default=64)
    parser.add_argument("--access-rounds", type=int, default=30)
    sys.exit(asyncio.run(main(parser.parse_args())))
