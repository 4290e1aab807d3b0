"""The cephfs driver end to end, beyond the conformance suite: a real one-node cluster, a
real Ganesha with FSAL_CEPH, nfs-cp. What a storage engineer would check: the subvolume
and its quota are the share, a shrink below the data changes nothing, a clone reports
its progress and holds the snapshot's data, a killed Ganesha serves again with its rules,
and Ganesha never holds the admin's key."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conformance.harness import CLIENT, new_share, reach
from conformance.harness_cephfs import CephSubject, admin_fill, ceph_subject

from sharemesh.driver_host.drivers import (
    AccessRuleSpec,
    ShareSpec,
    SnapshotSpec,
    create,
    progress_to,
)
from sharemesh.runtime.errors import FailedPrecondition, InvalidArgument, NotFound

from support import pid_alive

pytestmark = pytest.mark.integration

GIB = 1 << 30
MIB = 1 << 20
RW = [AccessRuleSpec(CLIENT, "READ_WRITE")]


@pytest.fixture(scope="module")
async def subject(
    tmp_path_factory: pytest.TempPathFactory, ceph_cluster: tuple[Path, Path]
) -> AsyncIterator[CephSubject]:
    async for made in ceph_subject(tmp_path_factory, ceph_cluster):
        yield made


async def quota_of(subject: CephSubject, share: ShareSpec) -> int | None:
    info = await subject.driver._info(share.share_id)
    return None if info is None else int(info["bytes_quota"])


async def test_a_share_is_a_subvolume_with_its_size_as_quota(subject: CephSubject) -> None:
    share = new_share(subject, 2)
    await subject.driver.create_share(share)
    try:
        assert await quota_of(subject, share) == 2 * GIB
    finally:
        await subject.driver.delete_share(share)
    assert await quota_of(subject, share) is None


async def test_a_shrink_below_the_data_is_refused_and_changes_nothing(
    subject: CephSubject,
) -> None:
    share = new_share(subject, 3)
    await subject.driver.create_share(share)
    try:
        await subject.driver.update_access(share, RW)
        assert await subject.write(share, "kept", MIB) == "OK"
        info = await subject.driver._info(share.share_id)
        assert info is not None
        c = subject.config
        await asyncio.to_thread(admin_fill, c.conf, c.keyring, info["path"], "big", GIB + GIB // 2)

        with pytest.raises(FailedPrecondition) as caught:
            await subject.driver.resize_share(share, 1)
        assert caught.value.reason == "SHRINK_WOULD_LOSE_DATA"
        assert await quota_of(subject, share) == 3 * GIB
        assert await subject.read(share, "kept") == MIB

        await subject.driver.resize_share(share, 2)  # what fits shrinks, online
        assert await quota_of(subject, share) == 2 * GIB
        assert await subject.read(share, "kept") == MIB
    finally:
        await subject.driver.delete_share(share)


async def test_a_clone_reports_its_progress_and_holds_the_snapshot(
    subject: CephSubject,
) -> None:
    share, clone = new_share(subject, 1), new_share(subject, 2)
    snapshot = SnapshotSpec(f"{share.share_id}-s", f"{share.name}/snapshots/s", share.share_id, 1)
    await subject.driver.create_share(share)
    try:
        await subject.driver.update_access(share, RW)
        assert await subject.write(share, "a", MIB) == "OK"
        await subject.driver.create_snapshot(share, snapshot)
        assert await subject.write(share, "b", MIB) == "OK"

        reports: list[tuple[int, str]] = []

        async def listen(percent: int, detail: str) -> None:
            reports.append((percent, detail))

        with progress_to(listen):
            await subject.driver.create_share_from_snapshot(clone, snapshot)
        # Ceph copies in the background: the wait was told, and ended complete.
        assert reports[0][1].startswith("clone "), reports
        assert reports[-1][0] == 100, reports
        assert [p for p, _ in reports] == sorted(p for p, _ in reports), reports
        assert await quota_of(subject, clone) == 2 * GIB  # its own size, not the source's

        await subject.driver.update_access(clone, RW)
        assert await subject.read(clone, "a") == MIB
        assert await subject.read(clone, "b") is None
        assert await subject.read(share, "b") == MIB
        # A share is not deleted from under its snapshots.
        with pytest.raises(FailedPrecondition):
            await subject.driver.delete_share(share)
    finally:
        await subject.driver.delete_share(clone)
        await subject.driver.delete_snapshot(share, snapshot)
        await subject.driver.delete_share(share)


async def test_a_clone_of_a_missing_snapshot_is_not_found(subject: CephSubject) -> None:
    share, clone = new_share(subject), new_share(subject)
    await subject.driver.create_share(share)
    try:
        missing = SnapshotSpec("nothing-here", "projects/p/shares/x/snapshots/n", share.share_id)
        with pytest.raises(NotFound):
            await subject.driver.create_share_from_snapshot(clone, missing)
        assert await quota_of(subject, clone) is None
    finally:
        await subject.driver.delete_share(share)


async def test_ganesha_acts_as_a_user_limited_to_the_group_never_the_admin(
    subject: CephSubject,
) -> None:
    share = new_share(subject)
    await subject.driver.create_share(share)
    try:
        await subject.driver.update_access(share, RW)
        export_file = subject.driver.ganesha.exports_dir / f"{share.export_id}.conf"
        text = export_file.read_text()
        admin_key = (await subject.driver.cluster.mon("auth get", entity="client.admin"))[0]
        assert admin_key["key"] not in text
        (user,) = await subject.driver.cluster.mon(
            "auth get", entity=f"client.{subject.driver.ganesha_client}"
        )
        assert f'User_Id = "{subject.driver.ganesha_client}"' in text and user["key"] in text
        group = subject.config.subvolume_group
        assert user["caps"]["mds"] == f"allow rw fsname=cephfs path=/volumes/{group}"
        assert "allow *" not in user["caps"].values()
    finally:
        await subject.driver.delete_share(share)


async def test_a_killed_ganesha_serves_again_with_its_rules(subject: CephSubject) -> None:
    share, other = new_share(subject), new_share(subject)
    for s in (share, other):
        await subject.driver.create_share(s)
    supervisor = asyncio.create_task(subject.driver.supervise())
    try:
        await subject.driver.update_access(share, RW)
        await subject.driver.update_access(other, [AccessRuleSpec(CLIENT, "READ_ONLY")])
        assert await subject.write(share, "before", MIB) == "OK"
        pid = int(subject.driver.ganesha.pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while pid_alive(pid) or not subject.driver.ganesha.is_alive():
            assert time.monotonic() < deadline, "ganesha was not restarted"
            await asyncio.sleep(0.2)
        while await subject.read(share, "before") != MIB:
            assert time.monotonic() < deadline, "the share did not serve again"
            await asyncio.sleep(0.5)
        assert await reach(subject, share) == "READ_WRITE"
        assert await reach(subject, other) == "READ_ONLY"
    finally:
        supervisor.cancel()
        for s in (share, other):
            await subject.driver.delete_share(s)


def test_bad_options_name_their_field(ceph_cluster: tuple[Path, Path], tmp_path: Path) -> None:
    conf, keyring = ceph_cluster
    base = {
        "conf": str(conf),
        "keyring": str(keyring),
        "nfs_port": 1,
        "mount_port": 2,
        "state_dir": str(tmp_path),
    }
    for name, value in (("subvolume_group", "../etc"), ("fs_name", 'x"; }'), ("client", "")):
        with pytest.raises(InvalidArgument) as caught:
            create("cephfs", {**base, name: value})
        assert caught.value.field_violations[0][0] == f"options.{name}"
    with pytest.raises(InvalidArgument) as caught:
        create("cephfs", {**base, "pool_dir": "/x"})
    assert caught.value.field_violations[0][0] == "options.pool_dir"
