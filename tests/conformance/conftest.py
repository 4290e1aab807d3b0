"""The drivers under test: one `driver` per kind and test module (for `local`, one
Ganesha serving every share of the module), and a fresh 1 GiB share per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from conformance.harness import FakeSubject, LocalSubject, Subject, new_share
from sharemesh.driver_host.drivers import (
    FakeDriver,
    FakeDriverConfig,
    LocalDriver,
    LocalDriverConfig,
    ShareSpec,
    _loopfs,
)
from sharemesh.runtime.ports import free_port

from support import ensure_rpcbind, processes_mentioning

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
        # Last resort if a test died between steps: nothing may outlive the module.
        for image in (config.pool_dir / "images").glob("*.img"):
            await _loopfs.unmount(config.pool_dir / "mnt" / image.stem)
            await _loopfs.detach(image)
        assert not processes_mentioning(str(root)), "a test process survived"


async def _fake(config: FakeDriverConfig) -> AsyncIterator[Subject]:
    subject = FakeSubject(FakeDriver(config))
    await subject.driver.start()
    yield subject
    await subject.driver.stop(stop_servers=True)


@pytest.fixture(scope="module", params=["local", "fake", "fake-capable"])
async def driver(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Subject]:
    """`fake-capable` offers shrink and snapshots, so the tests' other branches run too."""
    if request.param == "local":
        subjects = _local(tmp_path_factory)
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
