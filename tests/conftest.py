"""Generic fixtures: one real etcd per test module on random ports, and a client with a
unique root prefix per test so tests never see each other's keys."""

from __future__ import annotations

# First, before anything imports grpc: the runtime turns off gRPC's fork handlers, which
# crash the children an in-process launcher forks.
import sharemesh.runtime  # noqa: F401

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from xdist.scheduler import LoadScopeScheduling

from sharemesh.launcher import STORAGE_RANGE_ENV
from sharemesh.launcher.etcd_server import EtcdServer
from sharemesh.runtime import ports
from sharemesh.runtime.coordination import connect

# ---- Parallel runs: `pytest -n 2 --dist loadscope` (pytest-xdist), as scripts/test does ----

# What belongs to the whole machine runs on one worker, one test after another: the
# session's Ceph and Gluster clusters (each worker asking for them would start its own),
# the root routes of 169.254.64.0/18 that multi-host meshes add, and a storage leg at a
# fixed place of the default block. The controller sees only test ids, so this goes by
# module, and by the conformance driver's parameter.
HOST_WIDE = "host-wide"
_HOST_WIDE_MODULES = {
    "test_cephfs_driver.py",
    "test_glusterfs_driver.py",
    "test_network_release.py",  # leg 7 of the default block
    "test_cephfs_journey.py",
    "test_gluster_journey.py",
    "test_gateway_native.py",
    "test_three_backends.py",
    "test_hosts.py",
    "test_hosts_native.py",
    "test_launcher.py",  # its --hosts test routes; `sharemesh up` takes the default block
}
_CLUSTER_FIXTURES = {"ceph_cluster", "gluster_volume"}
_CLUSTER_DRIVERS = {"glusterfs", "cephfs"}  # conformance's `driver` asks for them itself


def _host_wide(nodeid: str) -> bool:
    module, _, rest = nodeid.partition("::")
    ids = rest.partition("[")[2].rstrip("]").split("-")
    return module.rsplit("/", 1)[-1] in _HOST_WIDE_MODULES or bool(_CLUSTER_DRIVERS & set(ids))


class _Scheduling(LoadScopeScheduling):
    """Whole modules to a worker (a module-scoped mesh starts once); what is host-wide
    is one unit."""

    def _split_scope(self, nodeid: str) -> str:
        return HOST_WIDE if _host_wide(nodeid) else nodeid.split("::", 1)[0]


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadScopeScheduling | None:
    return _Scheduling(config, log) if config.getvalue("dist") == "loadscope" else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test using the clusters that the list above does not name would start a second
    cluster on the other worker."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for item in items:
        callspec = getattr(item, "callspec", None)
        clusters = bool(_CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ()))) or (
            callspec is not None and callspec.params.get("driver") in _CLUSTER_DRIVERS
        )
        if clusters and not _host_wide(item.nodeid):
            raise pytest.UsageError(
                f"{item.nodeid} uses the clusters: add it to _HOST_WIDE_MODULES"
            )


def pytest_configure(config: pytest.Config) -> None:
    """On a worker, the ports this process picks and the storage legs of its meshes'
    gateways come from shares of their own, so two workers' meshes never meet there."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
    if not worker:
        return
    index, count = int(worker[2:]), int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    # 169.254.64.0/22 is what single-host meshes use (hosts take the /22s after it);
    # its first /24 holds the default block's legs, which `sharemesh up` takes.
    assert count <= 3, "three workers at most: each takes a /24 of 169.254.65.0-67.255"
    # Environment settings: the meshes' own processes (a driver-host picking Ganesha's
    # ports, say) inherit them too.
    os.environ[ports.SHARE_ENV] = f"{index}/{count}"
    os.environ[STORAGE_RANGE_ENV] = f"169.254.{65 + index}.0/24"


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
