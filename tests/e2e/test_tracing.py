"""One trace follows a request across services: a create's spans from the api, the
scheduler and the driver-host share its trace id."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from sharemesh.client import Client

from mesh_ops import TENANT_KEYS, create_share, running_mesh

pytestmark = pytest.mark.e2e


async def test_a_create_is_one_trace_across_services(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    spans_dir = tmp_path / "spans"
    config = (
        f"""
[telemetry]
spans_dir = "{spans_dir}"
[[backends]]
name = "local"
[backends.options]
capacity_gib = 2
"""
        + TENANT_KEYS
    )
    async with running_mesh(tmp_path_factory, config) as mesh:
        async with Client(mesh.api_address, "alpha-key") as alpha:
            await create_share(alpha, "alpha", "traced")
    # The mesh has stopped, so every process has flushed its spans.
    services_of = defaultdict(set)
    for spans in spans_dir.glob("*.spans.jsonl"):
        for line in spans.read_text().splitlines():
            span = json.loads(line)
            services_of[span["trace_id"]].add(span["service"])
    assert any(
        {"api", "scheduler", "driver-host"} <= services for services in services_of.values()
    ), dict(services_of)
