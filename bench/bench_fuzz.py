"""The API fuzzer of tests/e2e/test_fuzz.py, longer: every public method against a real
local mesh, with as many generated requests per method as asked.

Prints, per method, how many calls answered each status code and how long the method
took; then every finding (INTERNAL/UNKNOWN, hangs, state changed by a refused call,
leaked paths or keys, other projects' names, restarted services) with the smallest
request that showed it. Exits 1 if there was any finding.

    .venv/bin/python bench/bench_fuzz.py [--examples 2000] [--methods ShareService.CreateShare ...]
"""

from __future__ import annotations

# isort: off
# First, before anything imports grpc: the runtime turns off gRPC's fork handlers, which
# crash the children an in-process launcher forks (as in tests/conftest.py).
import sharemesh.runtime  # noqa: F401

# isort: on
import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent / "tests" / "e2e")]

from sharemesh.launcher import LocalMesh  # noqa: E402

from fuzzing import Fuzzer, children_pids, public_methods, tidy  # noqa: E402
from mesh_ops import MESH_CONFIG  # noqa: E402
from support import assert_host_clean, ensure_rpcbind  # noqa: E402


async def main(examples: int, wanted: list[str], reasons: int) -> int:
    methods = [m for m in public_methods() if not wanted or m.id in wanted]
    if wanted and len(methods) != len(wanted):
        known = ", ".join(m.id for m in public_methods())
        raise SystemExit(f"unknown method in {wanted}; known: {known}")
    ensure_rpcbind()
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        state = Path(tmp)
        (state / "mesh.toml").write_text(MESH_CONFIG.format(capacity_gib=12))
        async with LocalMesh(state, state / "mesh.toml", api_port=0, lease_ttl_seconds=3) as mesh:
            assert mesh.etcd is not None and mesh.config is not None
            tokens = {
                "alpha": "alpha-key",
                "beta": "beta-key",
                "admin": mesh.admin_token,
                "nobody": "",
                "bogus": "not-a-key",
            }
            async with Fuzzer(
                mesh.api_address, mesh.etcd.endpoint, mesh.config.etcd.prefix, tokens, str(state)
            ) as fuzzer:
                problems = await tidy(fuzzer)
                started = time.perf_counter()
                totals: Counter[str] = Counter()
                print(f"{'method':45} {'calls':>6} {'s':>6}  statuses")
                for method in methods:
                    pids = children_pids(mesh)
                    began = time.perf_counter()
                    loop = asyncio.get_running_loop()
                    await asyncio.to_thread(fuzzer.run_method, method, examples, loop)
                    took = time.perf_counter() - began
                    problems += await tidy(fuzzer)
                    if (now := children_pids(mesh)) != pids:
                        problems.append(f"services restarted during {method.id}: {pids} -> {now}")
                    counts = fuzzer.counts[method.id]
                    totals.update(counts)
                    statuses = " ".join(f"{c}={n}" for c, n in counts.most_common())
                    print(f"{method.id:45} {sum(counts.values()):6} {took:6.1f}  {statuses}")
                    for reason, n in fuzzer.reasons.get(method.id, Counter()).most_common(reasons):
                        print(f"{'':45} {n:6}         {reason!r}")
                elapsed = time.perf_counter() - started
                print(f"\n{sum(totals.values())} calls in {elapsed:.1f} s", end="")
                print(f" ({sum(totals.values()) / elapsed:.0f}/s); by status:")
                for code, n in totals.most_common():
                    print(f"  {code:22} {n:7}")
                findings = fuzzer.report()
                print(f"\n{len(findings)} finding(s), {len(problems)} problem(s) keeping the world")
                for text in findings + problems:
                    print(text)
                failed = bool(findings or problems)
        assert_host_clean(state)
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000, help="requests per method")
    parser.add_argument("--methods", nargs="*", default=[], help="e.g. ShareService.GetShare")
    parser.add_argument("--reasons", type=int, default=0, help="top refusals to show per method")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.examples, args.methods, args.reasons)))
