"""Chaos: tenants' mixed operations while api, scheduler, driver-host, gateway, the
backend's Ganesha and etcd are killed with SIGKILL at random. Afterwards no acknowledged
operation is lost or failed, nothing is stuck, every share serves exactly its rules over
NFS, nothing leaked on the host, and capacity and quotas add up. bench/bench_chaos.py
runs the same for longer."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from chaos_ops import (
    TARGETS,
    Clock,
    Tally,
    Worker,
    check_accounting,
    check_data_path,
    check_host,
    check_model,
    converge,
    killer,
    mesh_config,
    report,
)

from sharemesh.client import Client
from sharemesh.launcher import LocalMesh

from mesh_ops import running_mesh

pytestmark = pytest.mark.e2e
PROJECTS = {"alpha": 6, "beta": 6, "gamma": 6, "delta": 6}  # quota GiB each
POOL_GIB = 30  # more than the quotas together: no create can lose a race for the pool
CHAOS_SECONDS = 60.0
KILL_INTERVAL = (2.0, 5.0)
CONVERGE_SECONDS = 75.0


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalMesh]:
    async with running_mesh(tmp_path_factory, mesh_config(PROJECTS, POOL_GIB)) as mesh:
        yield mesh


async def test_mixed_load_survives_kill_9_of_every_process(mesh: LocalMesh, tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED", time.time_ns() % 1_000_000))
    print(f"\nCHAOS_SEED={seed}")
    clients = [Client(mesh.api_address, f"{p}-key") for p in PROJECTS]
    admin = Client(mesh.api_address, mesh.admin_token)
    tally, clock = Tally(), Clock()
    workers = [
        Worker(c, p, seed + i, clock, tally) for i, (c, p) in enumerate(zip(clients, PROJECTS))
    ]
    try:
        stop = asyncio.Event()
        killing = asyncio.create_task(killer(mesh, stop, tally, random.Random(seed), KILL_INTERVAL))
        running = [asyncio.create_task(w.run(stop)) for w in workers]
        await asyncio.sleep(CHAOS_SECONDS)
        stop.set()
        last_kill = await killing
        clock.deadline = time.monotonic() + CONVERGE_SECONDS
        await asyncio.gather(*running)
        problems = list(tally.problems)
        converged: float | None = None
        try:
            converged = await converge(mesh, workers, last_kill)
        except AssertionError as stuck:
            problems.append(str(stuck))
        if converged is not None:
            problems += await check_model(workers, admin)
            problems += await check_accounting(mesh, list(PROJECTS))
            problems += await check_host(mesh)
            problems += await check_data_path(workers, tmp_path)
        print(report(tally, converged, problems, CHAOS_SECONDS))

        assert set(tally.kills) == set(TARGETS), tally.kills
        done = sum(n for (_, outcome), n in tally.ops.items() if outcome == "done")
        assert done >= 40, f"only {done} operations finished: the load did not run"
        assert not problems

        # Then, with no more kills, every share goes and leaves nothing behind.
        for worker in workers:
            for share in list(worker.live.values()):
                await worker._delete_share(share)
        assert not tally.problems[len(problems) :]
        assert not await check_accounting(mesh, list(PROJECTS))
        assert not await check_host(mesh)
    finally:
        for client in (*clients, admin):
            await client.close()
