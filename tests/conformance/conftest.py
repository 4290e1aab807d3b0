"""The drivers under test: one `driver` per kind and test module (for `local`, one
Ganesha serving every share of the module), and a fresh 1 GiB share per test."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator

import pytest

from conformance.harness import FakeSubject, LocalSubject, Subject, new_share
from conformance.harness_cephfs import ceph_subject
from conformance.harness_glusterfs import gluster_subject
from sharemesh.driver_host.drivers import (
    FakeDriver,
    FakeDriverConfig,
    LocalDriver,
    LocalDriverConfig,
    ShareSpec,
)
from sharemesh.runtime.ports import free_port

from support import ensure_rpcbind, loops_under, mounts_under, processes_mentioning

CAPACITY_GIB = 6


async def _local(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Subject]:
    ensure_rpcbind()
    root = tmp_path_factory.mktemp("local")
    config = LocalDriverConfig(
        pool_dir=root / "pool",
        capacity_gib=CAPACITY_GIB,
        nfs_port=free_port(),
        mount_port=free_port(),
        state_dir=root / "state",
    )
    (root / "scratch").mkdir()
    subject = LocalSubject(config, LocalDriver(config), root / "scratch")
    try:
        await subject.driver.start()
        yield subject
    finally:
        await subject.driver.stop(stop_servers=True)
        # Shares, snapshots and the pool itself: the stop released every one of them.
        left = mounts_under(root) + loops_under(root)
        # Last resort if a test died between steps: nothing may outlive the module.
        for line in sorted(mounts_under(root), key=lambda m: -len(m.split()[1])):
            subprocess.run(["umount", "-l", line.split()[1]], check=False)
        for line in loops_under(root):
            subprocess.run(["losetup", "-d", line.split(":")[0]], check=False)
        assert not processes_mentioning(str(root)), "a test process survived"
        assert not left, f"the driver's stop left {left}"


async def _fake(config: FakeDriverConfig) -> AsyncIterator[Subject]:
    subject = FakeSubject(FakeDriver(config))
    await subject.driver.start()
    yield subject
    await subject.driver.stop(stop_servers=True)


@pytest.fixture(scope="module", params=["local", "glusterfs", "cephfs", "fake", "fake-capable"])
async def driver(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Subject]:
    """`fake-capable` offers shrink and snapshots, so the tests' other branches run too."""
    if request.param == "local":
        subjects = _local(tmp_path_factory)
    elif request.param == "glusterfs":
        volume = request.getfixturevalue("gluster_volume")
        subjects = gluster_subject(tmp_path_factory, volume)
    elif request.param == "cephfs":
        subjects = ceph_subject(tmp_path_factory, request.getfixturevalue("ceph_cluster"))
    else:
        capable = request.param == "fake-capable"
        subjects = _fake(
            FakeDriverConfig(
                capacity_gib=CAPACITY_GIB, shrink_support=capable, snapshot_support=capable
            )
        )
    async for subject in subjects:
        yield subject


@pytest.fixture
async def share(driver: Subject) -> AsyncIterator[ShareSpec]:
    """A created 1 GiB share, exported to nobody yet; deleted after the test."""
    spec = new_share(driver)
    try:
        await driver.driver.create_share(spec)
        yield spec
    finally:
        await driver.driver.delete_share(spec)
