"""The driver contract (DESIGN §7), checked from a client's side, for every driver.

Where an operation depends on a capability, the test checks both ways: a driver that
offers it does it, one that does not refuses with FAILED_PRECONDITION naming it.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from conformance.harness import CLIENT, OTHER, Subject, new_share, reach
from sharemesh.driver_host.drivers import (
    AccessRuleSpec,
    Capabilities,
    Driver,
    PoolStats,
    ShareSpec,
    SnapshotSpec,
)
from sharemesh.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)

pytestmark = pytest.mark.integration

MIB = 1 << 20


def rw(address: str) -> AccessRuleSpec:
    return AccessRuleSpec(address, "READ_WRITE")


def ro(address: str) -> AccessRuleSpec:
    return AccessRuleSpec(address, "READ_ONLY")


async def pool_of(subject: Subject) -> PoolStats:
    (pool,) = [p for p in (await subject.driver.stats()).pools if p.name == subject.pool]
    return pool


async def offers(subject: Subject) -> Capabilities:
    return (await pool_of(subject)).offers


def refused_for(capability: str) -> pytest.RaisesExc[FailedPrecondition]:
    return pytest.raises(FailedPrecondition, match=capability)


def test_is_a_driver(driver: Subject) -> None:
    assert isinstance(driver.driver, Driver)


# ---- create and delete --------------------------------------------------------------------


async def test_create_is_idempotent_and_exports_to_nobody(driver: Subject) -> None:
    spec = new_share(driver)
    before = await pool_of(driver)
    try:
        first = await driver.driver.create_share(spec)
        again = await driver.driver.create_share(spec)
        assert first == again and first, "a repeat must answer the same export locations"
        assert (await pool_of(driver)).provisioned_gib == before.provisioned_gib + 1
        assert await reach(driver, spec) is None, "a new share is exported to nobody"

        # A repeat after rules were given keeps them.
        await driver.driver.update_access(spec, [rw(CLIENT)])
        assert await driver.driver.create_share(spec) == first
        assert await reach(driver, spec) == "READ_WRITE"
    finally:
        await driver.driver.delete_share(spec)


async def test_delete_is_idempotent_and_a_missing_share_is_success(driver: Subject) -> None:
    spec = new_share(driver)
    before = await pool_of(driver)
    await driver.driver.create_share(spec)
    await driver.driver.update_access(spec, [rw(CLIENT)])
    assert await driver.write(spec, "one", MIB) == "OK"

    await driver.driver.delete_share(spec)
    await driver.driver.delete_share(spec)
    await driver.driver.delete_share(new_share(driver))  # never existed

    assert await reach(driver, spec) is None
    assert (await pool_of(driver)).provisioned_gib == before.provisioned_gib
    with pytest.raises(NotFound):
        await driver.driver.ensure_share(spec, [rw(CLIENT)])

    # The same id again is a new, empty share.
    await driver.driver.create_share(spec)
    try:
        await driver.driver.update_access(spec, [rw(CLIENT)])
        assert await driver.read(spec, "one") is None
    finally:
        await driver.driver.delete_share(spec)


async def test_bad_shares_are_refused_before_anything_is_made(driver: Subject) -> None:
    before = await pool_of(driver)
    good = new_share(driver)
    for bad, field in (
        (replace(good, share_id="../escape"), "share_id"),
        (replace(good, size_gib=0), "size_gib"),
        (replace(good, pool="no-such-pool"), "pool"),
    ):
        with pytest.raises(InvalidArgument) as caught:
            await driver.driver.create_share(bad)
        assert [f for f, _ in caught.value.field_violations] == [field]
    assert (await pool_of(driver)).provisioned_gib == before.provisioned_gib


# ---- capacity -------------------------------------------------------------------------------


async def test_the_capacity_report_follows_the_shares(driver: Subject) -> None:
    before = await pool_of(driver)
    assert 0 <= before.free_gib <= before.total_gib
    spec = new_share(driver, size_gib=2)
    await driver.driver.create_share(spec)
    try:
        created = await pool_of(driver)
        assert created.total_gib == before.total_gib
        assert created.provisioned_gib == before.provisioned_gib + 2
        assert created.free_gib <= before.free_gib

        await driver.driver.resize_share(spec, 3)
        assert (await pool_of(driver)).provisioned_gib == before.provisioned_gib + 3
    finally:
        await driver.driver.delete_share(spec)
    after = await pool_of(driver)
    assert after.provisioned_gib == before.provisioned_gib
    assert after.free_gib == before.free_gib


async def test_a_share_beyond_what_the_pool_may_provision_is_refused(driver: Subject) -> None:
    pool = await pool_of(driver)
    limit = pool.total_gib * pool.offers.max_over_subscription_ratio
    too_big = new_share(driver, size_gib=math.floor(limit - pool.provisioned_gib) + 1)
    with pytest.raises(ResourceExhausted):
        await driver.driver.create_share(too_big)
    assert (await pool_of(driver)).provisioned_gib == pool.provisioned_gib
    with pytest.raises(NotFound):
        await driver.driver.ensure_share(too_big, [])


# ---- access rules ------------------------------------------------------------------------


async def test_update_access_makes_the_clients_exactly_the_rule_set(
    driver: Subject, share: ShareSpec
) -> None:
    await driver.driver.update_access(share, [rw(CLIENT), ro(OTHER)])
    assert await reach(driver, share) == "READ_WRITE"

    await driver.driver.update_access(share, [ro(OTHER)])  # the client's rule removed
    assert await reach(driver, share) is None

    await driver.driver.update_access(share, [ro(CLIENT)])
    assert await reach(driver, share) == "READ_ONLY"

    await driver.driver.update_access(share, [])
    assert await reach(driver, share) is None

    # A host's own rule wins over its subnet's, in either order.
    subnet = CLIENT.rsplit(".", 1)[0] + ".0/24"
    await driver.driver.update_access(share, [ro(subnet), rw(CLIENT)])
    assert await reach(driver, share) == "READ_WRITE"
    await driver.driver.update_access(share, [rw(subnet), ro(CLIENT)])
    assert await reach(driver, share) == "READ_ONLY"


async def test_a_bad_rule_is_refused_and_changes_nothing(driver: Subject, share: ShareSpec) -> None:
    await driver.driver.update_access(share, [rw(CLIENT)])
    unknown_level = AccessRuleSpec(CLIENT, "ADMIN")  # type: ignore[arg-type]
    for bad in (rw("10.0.0.1; }"), rw("not-an-address"), unknown_level):
        with pytest.raises(InvalidArgument):
            await driver.driver.update_access(share, [ro(OTHER), bad])
    assert await reach(driver, share) == "READ_WRITE"


async def test_data_written_is_read_back(driver: Subject, share: ShareSpec) -> None:
    await driver.driver.update_access(share, [rw(CLIENT)])
    assert await driver.write(share, "one", MIB) == "OK"
    assert await driver.read(share, "one") == MIB


# ---- restart --------------------------------------------------------------------------------


async def test_ensure_after_a_restart_serves_the_share_with_its_rules(
    driver: Subject, share: ShareSpec
) -> None:
    locations = await driver.driver.create_share(share)
    await driver.driver.update_access(share, [rw(CLIENT)])
    assert await driver.write(share, "one", MIB) == "OK"

    await driver.restart()
    assert await driver.driver.ensure_share(share, [ro(CLIENT)]) == locations
    assert await driver.driver.ensure_share(share, [ro(CLIENT)]) == locations
    assert await reach(driver, share) == "READ_ONLY"
    assert await driver.read(share, "one") == MIB
    # The restarted driver knows its shares: their capacity, and their rules.
    assert (await pool_of(driver)).provisioned_gib >= share.size_gib
    await driver.driver.update_access(share, [rw(CLIENT)])
    assert await reach(driver, share) == "READ_WRITE"


# ---- resize and the size limit --------------------------------------------------------------


async def test_resize_grows_and_shrinks_only_where_offered(
    driver: Subject, share: ShareSpec
) -> None:
    before = await pool_of(driver)
    await driver.driver.resize_share(share, 2)
    await driver.driver.resize_share(share, 2)  # a repeat is harmless
    assert (await pool_of(driver)).provisioned_gib == before.provisioned_gib + 1

    if before.offers.shrink_support:
        await driver.driver.resize_share(share, 1)
        assert (await pool_of(driver)).provisioned_gib == before.provisioned_gib
    else:
        with refused_for("shrink_support") as caught:
            await driver.driver.resize_share(share, 1)
        assert caught.value.metadata == {"capability": "shrink_support"}
        assert (await pool_of(driver)).provisioned_gib == before.provisioned_gib + 1

    with pytest.raises(NotFound):
        await driver.driver.resize_share(new_share(driver), 2)


async def test_the_size_is_a_hard_limit_and_a_grow_lifts_it(
    driver: Subject, share: ShareSpec
) -> None:
    await driver.driver.update_access(share, [rw(CLIENT)])
    await driver.fill(share, leave_bytes=512 << 10)
    assert await driver.write(share, "big", 4 * MIB) == "NOSPC"
    assert (await driver.read(share, "big") or 0) < 4 * MIB

    await driver.driver.resize_share(share, 2)  # online: the client keeps its mount
    assert await driver.write(share, "big2", 4 * MIB) == "OK"
    assert await driver.read(share, "big2") == 4 * MIB


async def test_a_shrink_never_loses_data(driver: Subject, share: ShareSpec) -> None:
    await driver.driver.resize_share(share, 2)
    await driver.driver.update_access(share, [rw(CLIENT)])
    await driver.fill(share, leave_bytes=256 * MIB)  # more than 1 GiB is stored
    with pytest.raises(FailedPrecondition):
        await driver.driver.resize_share(share, 1)
    assert await driver.write(share, "after", MIB) == "OK"


# ---- snapshots --------------------------------------------------------------------------------


def snapshot_of(share: ShareSpec, n: int = 1) -> SnapshotSpec:
    return SnapshotSpec(
        snapshot_id=f"{share.share_id}-snap-{n}",
        name=f"{share.name}/snapshots/s{n}",
        share_id=share.share_id,
        size_gib=share.size_gib,
        export_id=share.export_id + 10_000 * n,  # unique per NFS server, as shares' are
    )


async def test_snapshots_where_offered(driver: Subject, share: ShareSpec) -> None:
    snapshot = snapshot_of(share)
    caps = await offers(driver)
    if not caps.snapshot_support:
        with refused_for("snapshot_support"):
            await driver.driver.create_snapshot(share, snapshot)
        with refused_for("snapshot_support"):
            await driver.driver.delete_snapshot(share, snapshot)
        return

    await driver.driver.update_access(share, [rw(CLIENT)])
    assert await driver.write(share, "before", MIB) == "OK"
    await driver.driver.create_snapshot(share, snapshot)
    await driver.driver.create_snapshot(share, snapshot)  # a repeat is harmless
    assert await driver.write(share, "after", MIB) == "OK"
    # The share stays as it is, the snapshot does not follow it.
    assert await driver.read(share, "after") == MIB

    await driver.driver.delete_snapshot(share, snapshot)
    await driver.driver.delete_snapshot(share, snapshot)  # missing is success
    if caps.revert_to_snapshot_support:
        with pytest.raises(NotFound):
            await driver.driver.revert_to_snapshot(share, snapshot)


async def test_a_share_from_a_snapshot_where_offered(driver: Subject, share: ShareSpec) -> None:
    snapshot = snapshot_of(share)
    clone = new_share(driver)
    caps = await offers(driver)
    if not caps.create_share_from_snapshot_support:
        before = await pool_of(driver)
        with refused_for("create_share_from_snapshot_support"):
            await driver.driver.create_share_from_snapshot(clone, snapshot)
        assert (await pool_of(driver)).provisioned_gib == before.provisioned_gib
        with pytest.raises(NotFound):
            await driver.driver.ensure_share(clone, [])
        return

    await driver.driver.update_access(share, [rw(CLIENT)])
    assert await driver.write(share, "before", MIB) == "OK"
    await driver.driver.create_snapshot(share, snapshot)
    assert await driver.write(share, "after", MIB) == "OK"
    try:
        first = await driver.driver.create_share_from_snapshot(clone, snapshot)
        assert await driver.driver.create_share_from_snapshot(clone, snapshot) == first
        assert await reach(driver, clone) is None, "a new share is exported to nobody"
        await driver.driver.update_access(clone, [rw(CLIENT)])
        assert await driver.read(clone, "before") == MIB
        assert await driver.read(clone, "after") is None
        # The clone is a share of its own: writes to it leave the source alone.
        assert await driver.write(clone, "clone-only", MIB) == "OK"
        assert await driver.read(share, "clone-only") is None
    finally:
        await driver.driver.delete_share(clone)
        await driver.driver.delete_snapshot(share, snapshot)


async def test_revert_to_a_snapshot_where_offered(driver: Subject, share: ShareSpec) -> None:
    snapshot = snapshot_of(share)
    caps = await offers(driver)
    if not caps.revert_to_snapshot_support:
        with refused_for("revert_to_snapshot_support"):
            await driver.driver.revert_to_snapshot(share, snapshot)
        return

    await driver.driver.update_access(share, [rw(CLIENT)])
    assert await driver.write(share, "before", MIB) == "OK"
    await driver.driver.create_snapshot(share, snapshot)
    assert await driver.write(share, "after", MIB) == "OK"
    try:
        await driver.driver.revert_to_snapshot(share, snapshot)
        await driver.driver.revert_to_snapshot(share, snapshot)  # a repeat is harmless
        assert await driver.read(share, "before") == MIB
        assert await driver.read(share, "after") is None
        assert await reach(driver, share) == "READ_WRITE", "a revert keeps the rules"
    finally:
        await driver.driver.delete_snapshot(share, snapshot)


async def test_a_mountable_snapshot_where_offered(driver: Subject, share: ShareSpec) -> None:
    snapshot = snapshot_of(share)
    caps = await offers(driver)
    if not caps.mount_snapshot_support:
        with refused_for("mount_snapshot_support"):
            await driver.driver.export_snapshot(share, snapshot, [rw(CLIENT)])
        return

    await driver.driver.update_access(share, [rw(CLIENT)])
    assert await driver.write(share, "before", MIB) == "OK"
    await driver.driver.create_snapshot(share, snapshot)
    assert await driver.write(share, "after", MIB) == "OK"
    try:
        # Only the rules' clients may mount it.
        (location,) = await driver.driver.export_snapshot(share, snapshot, [rw(OTHER)])
        assert location != (await driver.driver.ensure_share(share, [rw(CLIENT)]))[0]
        assert not await driver.mounts_at(location)

        # Read-only for every client, even one the share lets write; as of the snapshot.
        again = await driver.driver.export_snapshot(share, snapshot, [rw(CLIENT)])
        assert again == [location], "a repeat answers the same export location"
        assert await driver.mounts_at(location)
        assert await driver.read_at(location, "before") == MIB
        assert await driver.read_at(location, "after") is None
        assert await driver.write_at(location, "new", 4096) == "ROFS"
        assert await driver.read_at(location, "new") is None
        assert await driver.write(share, "share-still-writable", MIB) == "OK"

        # After a restart, export_snapshot (as ensure) serves it again.
        await driver.restart()
        assert await driver.driver.export_snapshot(share, snapshot, [ro(CLIENT)]) == [location]
        assert await driver.read_at(location, "before") == MIB
        assert await driver.write_at(location, "new", 4096) == "ROFS"
    finally:
        await driver.driver.delete_snapshot(share, snapshot)
    assert not await driver.mounts_at(location), "a deleted snapshot is not served"
    with pytest.raises(NotFound):
        await driver.driver.export_snapshot(share, snapshot, [rw(CLIENT)])
    assert await driver.read(share, "after") == MIB, "the share keeps its data"
