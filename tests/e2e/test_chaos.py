"""Chaos: tenants' mixed operations while api, scheduler, driver-host, gateway, the
backend's Ganesha and etcd are killed with SIGKILL at random. Afterwards no acknowledged
operation is lost or failed, nothing is stuck, every share serves exactly its rules over
NFS, nothing leaked on the host, and capacity and quotas add up. bench/bench_chaos.py
runs the same for longer."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sharemesh.launcher import LocalMesh

from chaos_ops import TARGETS, chaos, check_accounting, check_host, mesh_config, report
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
    outcome = await chaos(
        mesh, list(PROJECTS), CHAOS_SECONDS, KILL_INTERVAL, CONVERGE_SECONDS, seed, tmp_path
    )
    try:
        print(report(outcome, CHAOS_SECONDS))
        assert set(outcome.tally.kills) == set(TARGETS), outcome.tally.kills
        done = sum(n for (_, result), n in outcome.tally.ops.items() if result == "done")
        assert done >= 40, f"only {done} operations finished: the load did not run"
        assert not outcome.problems

        # Then, with no more kills, every share goes and leaves nothing behind.
        for worker in outcome.workers:
            await worker.delete_all()
        assert not outcome.tally.problems
        assert not await check_accounting(mesh, list(PROJECTS))
        assert not await check_host(mesh)
    finally:
        for worker in outcome.workers:
            await worker.client.close()
