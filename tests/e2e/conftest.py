"""One real mesh per test module: etcd, the four services, the local backend with
its Ganesha, all started by the same launcher as `sharemesh up`."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sharemesh.client import Client
from sharemesh.launcher import LocalMesh

from mesh_ops import MESH_CONFIG
from support import assert_host_clean, ensure_rpcbind, mounts_under


@pytest.fixture(scope="module")
def cramped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 1 MiB tmpfs: a pool there fails for real (mkfs.xfs runs out of room)."""
    path = tmp_path_factory.mktemp("cramped")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)
        assert not mounts_under(path)


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
