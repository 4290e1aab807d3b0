"""Placement decision time over synthetic pools (no servers): the configured filters and
weighers choosing among 10 to 10,000 pools, as p50 and p99, against a baseline measured
in the same run: one pass that only finds the pool with the most room.

    .venv/bin/python bench/bench_placement.py
"""

from __future__ import annotations

import random
import time

from sharemesh.runtime.config import SchedulerConfig
from sharemesh.scheduler._compose import placement
from sharemesh.scheduler._placement import Candidate, Request

SIZES = (10, 100, 1_000, 10_000)
BUDGET_SECONDS = 10.0  # per size, so the whole run stays under a minute


def pools(n: int, rng: random.Random) -> list[Candidate]:
    return [
        Candidate(
            f"backends/b{i // 4}/pools/p{i % 4}",
            f"backends/b{i // 4}",
            total_gib=rng.choice((100, 500, 2000)),
            allocated_gib=rng.randrange(0, 100),
            capabilities={
                "thin_provisioning": rng.choice(("true", "false")),
                "max_over_subscription_ratio": "2.0",
                "tier": rng.choice(("gold", "silver", "bronze")),
                "goodness": str(rng.randrange(100)),
                "snapshot_support": rng.choice(("true", "false")),
            },
            availability_zone=rng.choice(("az1", "az2")),
        )
        for i in range(n)
    ]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))]


def main() -> None:
    rng = random.Random(7)
    chooser = placement(SchedulerConfig(weighers={"capacity": 1.0, "goodness": 0.5}))
    request = Request(
        10,
        {"tier": "<or> gold <or> silver", "snapshot_support": "<is> True"},
        availability_zone="az1",
    )
    print(
        f"{'pools':>6}  {'runs':>5}  {'p50 ms':>8}  {'p99 ms':>8}  {'baseline p50 ms':>15}  ratio"
    )
    for n in SIZES:
        candidates = pools(n, rng)
        timings, baseline = [], []
        started = time.perf_counter()
        while time.perf_counter() - started < BUDGET_SECONDS / 2 and len(timings) < 2000:
            t = time.perf_counter()
            chooser.choose(candidates, request)
            timings.append(time.perf_counter() - t)
        started = time.perf_counter()
        while time.perf_counter() - started < BUDGET_SECONDS / 2 and len(baseline) < 2000:
            t = time.perf_counter()
            max(candidates, key=lambda c: c.unallocated_gib)
            baseline.append(time.perf_counter() - t)
        p50, p99, base = (
            percentile(timings, 0.5),
            percentile(timings, 0.99),
            percentile(baseline, 0.5),
        )
        print(
            f"{n:6}  {len(timings):5}  {p50 * 1e3:8.3f}  {p99 * 1e3:8.3f}  {base * 1e3:15.3f}"
            f"  {p50 / base:5.1f}x"
        )


if __name__ == "__main__":
    main()
