"""Metrics through a whole mesh: every service's endpoint parses as Prometheus text and
shows what the test's calls did (RPCs by method and code, shares and operations by
state, the pool's size, allocation and real use, Ganesha's exports and a restart, the
scheduler's leadership, the work queues)."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sharemesh.client import Client, OperationFailed
from sharemesh.launcher import LocalMesh
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import TENANT_KEYS, Share, create_share, grant, refused, running_mesh, write

pytestmark = pytest.mark.e2e

GIB = 1 << 30
CAPACITY_GIB = 4
POOL = "backends/local/pools/default"
SHARES = "sharemesh.v1.ShareService"
CONFIG = (
    f"""
[[backends]]
name = "local"
[backends.options]
capacity_gib = {CAPACITY_GIB}
"""
    + TENANT_KEYS
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - loopback
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=")
        return str(answer.read().decode())


async def scrape(url: str) -> Samples:
    """Every sample of the endpoint, by name and labels (parsing fails on bad text)."""
    text = await asyncio.to_thread(_get, url)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


async def until(url: str, check: Callable[[Samples], bool], timeout: float = 30.0) -> Samples:
    """Scrapes until `check` holds (what a write or a restart changes comes a little later)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        samples = await scrape(url)
        if check(samples) or loop.time() > deadline:
            return samples
        await asyncio.sleep(0.5)


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    async with running_mesh(tmp_path_factory, CONFIG) as running:
        yield running


async def test_each_service_shows_the_calls_it_served(mesh: LocalMesh, tmp_path: Path) -> None:
    assert set(mesh.metrics) == {"api", "scheduler", "gateway", "driver-host-local"}
    async with Client(mesh.api_address, "alpha-key") as alpha:
        made = [await create_share(alpha, "alpha", f"m{i}") for i in range(2)]
        assert all(share.state == Share.ACTIVE for share in made)
        # Refused at once: no operation, nothing recorded but the call.
        await refused(
            alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name="projects/alpha/shares/no")),
            grpc.StatusCode.NOT_FOUND,
        )
        await refused(
            alpha.call(
                alpha.shares.CreateShare,
                ss.CreateShareRequest(
                    parent="projects/alpha", share_id="zero", share=Share(size_gib=0)
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        # Accepted, then failed: no pool has 100 GiB.
        with pytest.raises(OperationFailed):
            await create_share(alpha, "alpha", "huge", size_gib=100)
        # Real bytes, so the pool's real use moves.
        await grant(alpha, made[0].name, "127.0.0.1")
        data = tmp_path / "data.bin"
        data.write_bytes(os.urandom(32 << 20))
        code, out = await write(made[0], data, "data.bin")
        assert code == 0, out

    api = await scrape(mesh.metrics["api"])
    requests = "sharemesh_rpc_server_requests_total"
    assert value(api, requests, method=f"{SHARES}/CreateShare", code="OK") == 3
    assert value(api, requests, method=f"{SHARES}/CreateShare", code="INVALID_ARGUMENT") == 1
    assert value(api, requests, method=f"{SHARES}/GetShare", code="NOT_FOUND") == 1
    assert value(api, requests, method=f"{SHARES}/CreateAccessRule", code="OK") == 1
    latency = "sharemesh_rpc_server_duration_seconds_count"
    assert value(api, latency, method=f"{SHARES}/CreateShare", code="OK") == 3
    assert value(api, "sharemesh_shares", state="ACTIVE") == 2
    assert value(api, "sharemesh_shares", state="ERROR") == 1
    # Three creates and a grant: one failed, the rest succeeded, none still running.
    assert value(api, "sharemesh_operations", state="SUCCEEDED") == 3
    assert value(api, "sharemesh_operations", state="FAILED") == 1
    assert value(api, "sharemesh_operations", state="RUNNING") == 0

    scheduler = await scrape(mesh.metrics["scheduler"])
    assert value(scheduler, "sharemesh_leader", election="scheduler") == 1
    assert value(scheduler, "sharemesh_leader_changes_total", election="scheduler") == 1
    assert value(scheduler, "sharemesh_workqueue_depth", queue="placement") == 0
    place = "sharemesh.scheduler.v1.SchedulerService/PlaceShare"
    assert value(scheduler, requests, method=place, code="OK") == 3

    driver_url = mesh.metrics["driver-host-local"]
    driver = await until(
        driver_url, lambda s: (value(s, "sharemesh_pool_used_bytes", pool=POOL) or 0) >= 32 << 20
    )
    assert value(driver, "sharemesh_pool_capacity_bytes", pool=POOL) == CAPACITY_GIB * GIB
    assert value(driver, "sharemesh_pool_allocated_bytes", pool=POOL) == 2 * GIB
    assert value(driver, "sharemesh_pool_provisioned_bytes", pool=POOL) == 2 * GIB
    used = value(driver, "sharemesh_pool_used_bytes", pool=POOL) or 0
    assert 32 << 20 <= used < 2 * GIB, used
    assert value(driver, "sharemesh_workqueue_depth", queue="sync of backends/local") == 0
    sync = "sharemesh.driver.v1.DriverService/SyncShare"
    assert (value(driver, requests, method=sync, code="OK") or 0) >= 2
    ganesha = str(mesh.state_dir / "pools/local/ganesha/ganesha")
    assert value(driver, "sharemesh_ganesha_exports", ganesha=ganesha) == 2, sorted(
        key for key in driver if key[0] == "sharemesh_ganesha_exports"
    )

    # The launcher's readiness check is a call too: every service counts it.
    for name, url in mesh.metrics.items():
        samples = await scrape(url)
        health = "grpc.health.v1.Health/Check"
        assert (value(samples, requests, method=health, code="OK") or 0) >= 1, name
        assert "process_cpu_seconds_total" in names(samples), name


async def test_a_ganesha_restart_is_counted(mesh: LocalMesh) -> None:
    url = mesh.metrics["driver-host-local"]
    ganesha = mesh.state_dir / "pools/local/ganesha/ganesha"
    restarts = "sharemesh_ganesha_restarts_total"
    assert value(await scrape(url), restarts, ganesha=str(ganesha)) is None
    os.kill(int((ganesha / "ganesha.pid").read_text()), signal.SIGKILL)
    after = await until(url, lambda s: value(s, restarts, ganesha=str(ganesha)) is not None)
    assert value(after, restarts, ganesha=str(ganesha)) == 1
    # Back with every export it had.
    assert value(after, "sharemesh_ganesha_exports", ganesha=str(ganesha)) == 2


async def test_only_get_metrics_is_served(mesh: LocalMesh) -> None:
    base = mesh.metrics["api"].removesuffix("/metrics")
    for path, status in (("/", 404), ("/metrics/x", 404)):
        with pytest.raises(urllib.error.HTTPError) as error:
            await asyncio.to_thread(urllib.request.urlopen, base + path, None, 10)
        assert error.value.code == status
    post = urllib.request.Request(mesh.metrics["api"], data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        await asyncio.to_thread(urllib.request.urlopen, post, None, 10)
    assert error.value.code == 405
