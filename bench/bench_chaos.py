"""Chaos benchmark: the CI chaos suite (tests/e2e/test_chaos.py) for longer. Tenants'
workers create shares, add and remove access rules, grow and delete shares while api,
scheduler, driver-host, gateway, the backend's Ganesha and etcd are killed with SIGKILL
at random; then the mesh must converge and be true to every acknowledged operation.

Prints operations by kind and outcome, calls retried, kills by target, the time from
the last kill to a settled mesh, and every problem found (lost or failed operations,
stuck shares, leaked images, mounts, loop devices or exports, wrong accounting, shares
that do not serve their rules over NFS). Exits 1 if there was any.

    .venv/bin/python bench/bench_chaos.py [--seconds 600] [--projects 6] [--seed N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(HERE / "e2e"), str(HERE)]

# isort: off
# First, before anything imports grpc: children the in-process launcher forks crash
# unless the runtime turned off gRPC's fork handlers (see tests/conftest.py).
import sharemesh.runtime  # noqa: E402,F401
from chaos_ops import chaos, check_accounting, check_host, mesh_config, report  # noqa: E402
from sharemesh.launcher import LocalMesh  # noqa: E402
from support import assert_host_clean, ensure_rpcbind  # noqa: E402

# isort: on

NAMES = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa")


async def main(args: argparse.Namespace) -> int:
    projects = {name: args.quota for name in NAMES[: args.projects]}
    ensure_rpcbind()
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmp:
        state = Path(tmp) / "mesh"
        state.mkdir()
        (state / "mesh.toml").write_text(mesh_config(projects, args.quota * args.projects + 4))
        started = time.monotonic()
        async with LocalMesh(state, state / "mesh.toml", api_port=0, lease_ttl_seconds=3) as mesh:
            print(f"mesh up in {time.monotonic() - started:.1f}s; seed {args.seed}", flush=True)
            outcome = await chaos(
                mesh,
                list(projects),
                args.seconds,
                (args.kill_min, args.kill_max),
                args.converge,
                args.seed,
                Path(tmp),
            )
            print(report(outcome, args.seconds))
            done = sum(n for (_, result), n in outcome.tally.ops.items() if result == "done")
            print(f"  finished operations: {done} ({done / args.seconds:.1f}/s under chaos)")
            for worker in outcome.workers:
                await worker.delete_all()
                await worker.client.close()
            leaks = await check_accounting(mesh, list(projects)) + await check_host(mesh)
            print(f"  after deleting every share: {len(leaks)} leaks")
            print("".join(f"    {leak}\n" for leak in leaks), end="")
        assert_host_clean(state)
        return 1 if outcome.problems or outcome.tally.problems or leaks else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600, help="of load and kills")
    parser.add_argument("--projects", type=int, default=6, help="one worker each")
    parser.add_argument("--quota", type=int, default=6, help="GiB per project")
    parser.add_argument("--kill-min", type=float, default=2.0, help="seconds between kills")
    parser.add_argument("--kill-max", type=float, default=5.0)
    parser.add_argument("--converge", type=float, default=120, help="deadline, seconds")
    parser.add_argument("--seed", type=int, default=time.time_ns() % 1_000_000)
    sys.exit(asyncio.run(main(parser.parse_args())))
