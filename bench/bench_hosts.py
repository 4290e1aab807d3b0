"""A mesh of three hosts (`sharemesh up --hosts 3`) losing one, again and again.

Guests on hosts 2 and 3 read and write one share of a backend on host 1, each through
its own host's gateway. Each round host 2's scheduler is made the leader, then every
process of host 2 is killed (its etcd member and Ganesha servers too) and later started
again. Then every host restarts in turn (a rolling restart). Prints, per round and as
median and worst:

- the time from host 2's death to host 1's scheduler leading, beside the lease TTL
  (the baseline: a dead leader's lease must run out first);
- the longest stall of host 3's guest while host 2 is dead, and of each guest during a
  rolling restart, beside the longest gap between its rounds while nothing happens
  (the baseline, from the same run);
- how long host 2 takes, once started, to serve its guest again.

It prints figures, never asserts them. Everything it makes is removed at the end.

    .venv/bin/python bench/bench_hosts.py [--rounds 3] [--lease-ttl 3]
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
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(HERE / "tests"), str(HERE / "tests" / "e2e")]

from hosts_ops import (  # noqa: E402
    HOSTS_CONFIG,
    Traffic,
    client,
    shared_share,
    wait_for_leader,
)

from sharemesh.launcher import HostsMesh  # noqa: E402

from support import ensure_rpcbind, guest_namespaces  # noqa: E402


async def round_of_death(mesh: HostsMesh, survivor: Traffic, victim: Traffic) -> dict[str, float]:
    if await mesh.scheduler_leader() != "host-2":
        scheduler = mesh.children["host-1"]["scheduler"]
        assert scheduler.pid is not None
        os.kill(scheduler.pid, 9)
        await wait_for_leader(mesh, "host-2")
    await asyncio.sleep(2)
    killed = time.monotonic()
    await mesh.kill_host("host-2")
    led = await wait_for_leader(mesh, "host-1")
    await asyncio.sleep(5)
    dead_until = time.monotonic()
    await mesh.start_host("host-2")
    back = time.monotonic()
    while not victim.succeeded_between(back, time.monotonic()):
        await asyncio.sleep(0.1)
    return {
        "failover_s": led - killed,
        "survivor_stall_s": survivor.longest_stall(killed, dead_until),
        "victim_back_s": time.monotonic() - back,
    }


async def main(rounds: int, lease_ttl: int) -> None:
    ensure_rpcbind()
    with (
        tempfile.TemporaryDirectory(prefix="sharemesh-bench-hosts-") as tmp,
        guest_namespaces("g2", "g3") as made,
    ):
        state = Path(tmp)
        (state / "mesh.toml").write_text(HOSTS_CONFIG)
        guests = {"host-2": (made["g2"], "10.31.0.20"), "host-3": (made["g3"], "10.31.0.30")}
        async with (
            HostsMesh(state, 3, state / "mesh.toml", lease_ttl_seconds=lease_ttl) as mesh,
            client(mesh, "alpha-key") as alpha,
            client(mesh, mesh.admin_token) as admin,
        ):
            share = await shared_share(alpha, admin, guests, "bench")
            async with (
                Traffic(made["g2"], share, state / "g2") as on2,
                Traffic(made["g3"], share, state / "g3") as on3,
            ):
                quiet_from = time.monotonic()
                await asyncio.sleep(10)
                quiet = max(
                    on2.longest_stall(quiet_from, time.monotonic()),
                    on3.longest_stall(quiet_from, time.monotonic()),
                )
                print(
                    f"baseline: longest gap between a guest's rounds, nothing dying: {quiet:.2f}s"
                )
                deaths = []
                for n in range(1, rounds + 1):
                    figures = await round_of_death(mesh, on3, on2)
                    deaths.append(figures)
                    print(
                        f"death {n}: scheduler failover {figures['failover_s']:.2f}s "
                        f"({figures['failover_s'] / lease_ttl:.2f}x the {lease_ttl}s lease TTL); "
                        f"host 3's guest stalled {figures['survivor_stall_s']:.2f}s at most "
                        f"({figures['survivor_stall_s'] / quiet:.1f}x baseline); host 2 served "
                        f"its guest again {figures['victim_back_s']:.2f}s after its start",
                        flush=True,
                    )
                stalls = []
                for host in mesh.hosts:
                    began = time.monotonic()
                    await mesh.restart_host(host.name)
                    await asyncio.sleep(2)
                    ended = time.monotonic()
                    worst = max(g.longest_stall(began, ended) for g in (on2, on3))
                    stalls.append(worst)
                    print(
                        f"rolling restart of {host.name} ({ended - began:.1f}s): longest guest "
                        f"stall {worst:.2f}s ({worst / quiet:.1f}x baseline)",
                        flush=True,
                    )
        for key in ("failover_s", "survivor_stall_s", "victim_back_s"):
            values = [d[key] for d in deaths]
            print(f"{key}: median {statistics.median(values):.2f}s, worst {max(values):.2f}s")
        print(f"rolling restart: worst guest stall {max(stalls):.2f}s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lease-ttl", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.lease_ttl))
