"""Generic fixtures: one real etcd per test module on random ports, and a client with a
unique root prefix per test so tests never see each other's keys."""

from __future__ import annotations

# First, before anything imports grpc: the runtime turns off gRPC's fork handlers, which
# crash the children an in-process launcher forks.
import sharemesh.runtime  # noqa: F401

import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from sharemesh.launcher.etcd_server import EtcdServer
from sharemesh.runtime.coordination import connect


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd") / "data")
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


@pytest.fixture
def etcd_root() -> str:
    """A root prefix no other test uses, e.g. `/t-1a2b3c4d5e6f/`."""
    return f"/t-{uuid.uuid4().hex[:12]}/"


@pytest_asyncio.fixture
async def etcd_client(etcd_server: EtcdServer, etcd_root: str):  # type: ignore[no-untyped-def]
    """A connected aetcd client in the tests' loop; the test's root prefix is deleted after."""
    async with connect(etcd_server.endpoint) as client:
        try:
            yield client
        finally:
            await client.delete_prefix(etcd_root.encode())


# ---- GlusterFS: one development volume per test session (scripts/dev-gluster) ----------

_DEV_GLUSTER = Path(__file__).resolve().parent.parent / "scripts" / "dev-gluster"


@pytest.fixture(scope="session")
def gluster_volume(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A started one-brick Gluster volume with exact quotas, deleted (brick, image and
    all) after the session; its name."""
    home = tmp_path_factory.mktemp("gluster")
    try:
        up = subprocess.run(
            [str(_DEV_GLUSTER), "up", str(home)], capture_output=True, text=True, timeout=120
        )
        assert up.returncode == 0, up.stderr
        yield up.stdout.strip()
    finally:
        subprocess.run([str(_DEV_GLUSTER), "down", str(home)], timeout=120, check=False)


# ---- CephFS: one development cluster per test session (scripts/dev-ceph) ----------------

_DEV_CEPH = Path(__file__).resolve().parent.parent / "scripts" / "dev-ceph"


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A started one-node Ceph cluster with the file system `cephfs`, stopped and removed
    (daemons, OSD file, keys) after the session: its ceph.conf and admin keyring."""
    home = tmp_path_factory.mktemp("ceph")
    try:
        up = subprocess.run(
            [str(_DEV_CEPH), "up", str(home)], capture_output=True, text=True, timeout=240
        )
        assert up.returncode == 0, up.stderr
        conf, keyring = up.stdout.split()
        yield Path(conf), Path(keyring)
    finally:
        subprocess.run([str(_DEV_CEPH), "down", str(home)], timeout=120, check=False)
