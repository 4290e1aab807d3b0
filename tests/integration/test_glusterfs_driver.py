"""The glusterfs driver end to end, beyond the conformance suite: a real volume, a real
Ganesha with FSAL_GLUSTER, nfs-cp. What a storage engineer would check: the directory
and its quota are the share, a shrink keeps the data, a delete leaves nothing and is
quick (Ganesha's volume client is not ended by it), a killed Ganesha serves again."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from conformance.harness import CLIENT, new_share, reach
from conformance.harness_glusterfs import GlusterSubject, gluster_subject

from sharemesh.driver_host.drivers import (
    AccessRuleSpec,
    GlusterDriver,
    ShareSpec,
    SnapshotSpec,
    create,
)
from sharemesh.driver_host.drivers.glusterfs import SHARES_DIR
from sharemesh.runtime.errors import FailedPrecondition, InvalidArgument, NotFound

from support import pid_alive

pytestmark = pytest.mark.integration

GIB = 1 << 30
MIB = 1 << 20
RW = [AccessRuleSpec(CLIENT, "READ_WRITE")]


@pytest.fixture(scope="module")
async def subject(
    tmp_path_factory: pytest.TempPathFactory, gluster_volume: str
) -> AsyncIterator[GlusterSubject]:
    async for made in gluster_subject(tmp_path_factory, gluster_volume):
        yield made


def directory(share: ShareSpec) -> str:
    return f"{SHARES_DIR}/{share.share_id}"


async def test_a_share_is_a_directory_with_its_size_as_quota(subject: GlusterSubject) -> None:
    share = new_share(subject, 2)
    await subject.driver.create_share(share)
    try:
        assert subject.driver.volume.is_dir(directory(share))
        limit = await subject.driver.cli.limit(directory(share))
        assert limit is not None and limit.hard_bytes == 2 * GIB
    finally:
        await subject.driver.delete_share(share)


async def test_a_shrink_that_fits_is_done_one_that_does_not_changes_nothing(
    subject: GlusterSubject,
) -> None:
    share = new_share(subject, 3)
    await subject.driver.create_share(share)
    try:
        await subject.driver.update_access(share, RW)
        await subject.fill(share, leave_bytes=GIB + 512 * MIB)  # 1.5 GiB stored
        await subject.driver.resize_share(share, 2)  # fits
        limit = await subject.driver.cli.limit(directory(share))
        assert limit is not None and limit.hard_bytes == 2 * GIB

        with pytest.raises(FailedPrecondition) as refused:
            await subject.driver.resize_share(share, 1)
        assert refused.value.reason == "SHRINK_WOULD_LOSE_DATA"
        assert subject.config.volume not in refused.value.message, "no backend path for tenants"
        limit = await subject.driver.cli.limit(directory(share))
        assert limit is not None and limit.hard_bytes == 2 * GIB, "a refusal changes nothing"
        assert await subject.write(share, "after", MIB) == "OK"
        assert await subject.read(share, "filler") == GIB + 512 * MIB
    finally:
        await subject.driver.delete_share(share)


async def test_a_delete_leaves_no_directory_quota_or_export_and_is_quick(
    subject: GlusterSubject,
) -> None:
    # The only share of its Ganesha: without the anchor export its removal ended
    # Ganesha's client of the volume (glfs_fini, ~10 s).
    live = await subject.driver.ganesha.live_export_ids()
    assert live <= {65535}, f"another test left exports: {live}"
    share = new_share(subject)
    await subject.driver.create_share(share)
    await subject.driver.update_access(share, RW)
    assert await subject.write(share, "data", MIB) == "OK"

    started = time.monotonic()
    await subject.driver.delete_share(share)
    took = time.monotonic() - started
    assert took < 3, f"a delete took {took:.1f}s"

    assert not subject.driver.volume.is_dir(directory(share))
    assert await subject.driver.cli.limit(directory(share)) is None
    assert share.export_id not in await subject.driver.ganesha.live_export_ids()
    assert await reach(subject, share) is None
    await subject.driver.delete_share(share)  # missing is success


async def test_a_killed_ganesha_serves_every_share_again_with_its_rules(
    subject: GlusterSubject,
) -> None:
    shares = [new_share(subject), new_share(subject)]
    supervisor = asyncio.create_task(subject.driver.supervise())
    try:
        for share, rules in zip(shares, (RW, [AccessRuleSpec(CLIENT, "READ_ONLY")])):
            await subject.driver.create_share(share)
            await subject.driver.update_access(share, rules)
        assert await subject.write(shares[0], "before", MIB) == "OK"

        pid = int(subject.driver.ganesha.pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
            pid_alive(pid) or not subject.driver.ganesha.is_alive()
        ):
            await asyncio.sleep(0.2)
        assert subject.driver.ganesha.is_alive(), "ganesha was not restarted"
        # Running is not serving yet: FSAL_GLUSTER connects to the volume per export.
        while await subject.read(shares[0], "before") != MIB:
            assert time.monotonic() < deadline, "the share did not serve again"
            await asyncio.sleep(0.5)

        assert await reach(subject, shares[0]) == "READ_WRITE"
        assert await reach(subject, shares[1]) == "READ_ONLY"
    finally:
        supervisor.cancel()
        for share in shares:
            await subject.driver.delete_share(share)


async def test_snapshots_are_refused_naming_the_capability(subject: GlusterSubject) -> None:
    pool = (await subject.driver.stats()).pools[0]
    assert not pool.offers.snapshot_support and pool.offers.shrink_support
    share = new_share(subject)
    with pytest.raises(FailedPrecondition, match="snapshot_support"):
        await subject.driver.create_snapshot(
            share, SnapshotSpec("s1", f"{share.name}/snapshots/s1", share.share_id)
        )


async def test_bad_options_name_their_field(subject: GlusterSubject, gluster_volume: str) -> None:
    good = {
        "volume": gluster_volume,
        "nfs_port": 1,
        "mount_port": 2,
        "state_dir": str(subject.config.state_dir),
    }
    for bad, field in (
        ({"volume": 'gv0"; }'}, "fsal.volume"),
        ({"server": "host; }"}, "fsal.server"),
        ({"pool_dir": "/x"}, "options.pool_dir"),
        ({"max_over_subscription_ratio": 0.5}, "options.max_over_subscription_ratio"),
    ):
        with pytest.raises(InvalidArgument) as caught:
            create("glusterfs", {**good, **bad})
        assert [f for f, _ in caught.value.field_violations] == [field]


async def test_a_volume_that_does_not_exist_is_refused_at_start(
    subject: GlusterSubject,
) -> None:
    driver = GlusterDriver(replace(subject.config, volume="sm-no-such-volume"))
    with pytest.raises(NotFound):
        await driver.start()
