"""One real mesh per test module: etcd, the four services, the local backend with
its Ganesha, all started by the same launcher as `sharemesh up`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sharemesh.client import Client
from sharemesh.launcher import LocalMesh

from support import ensure_rpcbind, loops_under, mounts_under, processes_mentioning

MESH_CONFIG = """
reconcile_interval_seconds = 2

[[api.tokens]]
token = "alpha-key"
project = "alpha"

[[api.tokens]]
token = "beta-key"
project = "beta"

[[backends]]
name = "local"
driver = "local"
[backends.options]
capacity_gib = {capacity_gib}
"""


@pytest.fixture(scope="module")
def capacity_gib() -> int:
    return 12


@pytest.fixture(scope="module")
async def mesh(
    tmp_path_factory: pytest.TempPathFactory, capacity_gib: int
) -> AsyncIterator[LocalMesh]:
    ensure_rpcbind()
    state = tmp_path_factory.mktemp("mesh")
    config = state / "mesh.toml"
    config.write_text(MESH_CONFIG.format(capacity_gib=capacity_gib))
    async with LocalMesh(state, config, api_port=0, lease_ttl_seconds=3) as running:
        yield running
    assert_host_clean(state)


def assert_host_clean(state: Path) -> None:
    assert not mounts_under(state), mounts_under(state)
    assert not loops_under(state), loops_under(state)
    assert not processes_mentioning(str(state)), processes_mentioning(str(state))


@pytest.fixture(scope="module")
async def alpha(mesh: LocalMesh) -> AsyncIterator[Client]:
    async with Client(mesh.api_address, "alpha-key") as client:
        yield client


@pytest.fixture(scope="module")
async def beta(mesh: LocalMesh) -> AsyncIterator[Client]:
    async with Client(mesh.api_address, "beta-key") as client:
        yield client


@pytest.fixture(scope="module")
async def admin(mesh: LocalMesh) -> AsyncIterator[Client]:
    async with Client(mesh.api_address, mesh.admin_token) as client:
        yield client
