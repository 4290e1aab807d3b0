"""The ledger's counters against a real etcd: each change is counted from the value
its transaction compares, so racing writers never both count from one value, and an
absent counter is created once; a project's share count holds its limit under racing
placements."""

from __future__ import annotations

import asyncio

from share_records import share_in

from sharemesh.runtime import ledger, quota
from sharemesh.runtime.config import QuotaConfig
from sharemesh.runtime.coordination import Store, keys
from sharemesh.runtime.errors import Aborted, ResourceExhausted
from sharemesh.state.v1 import records_pb2

POOL = "backends/b/pools/p"


async def test_racing_adjusts_one_wins_per_revision_and_none_is_lost(
    etcd_client, etcd_root
) -> None:  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)

    async def add_one() -> int:
        """Retries on a lost race, as the callers do; returns how many races it lost."""
        lost = 0
        while True:
            counter = await ledger.read_pool(store, POOL)
            txn = store.txn()
            counter.add(txn, 1)
            try:
                await txn.commit()
                return lost
            except Aborted:
                lost += 1

    losses = await asyncio.gather(*(add_one() for _ in range(20)))
    assert (await ledger.read_pool(store, POOL)).value == 20
    assert sum(losses) > 0, "the writers never raced: the test proves nothing"


async def test_two_adjusts_from_one_read_commit_only_once(etcd_client, etcd_root) -> None:  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    for absent in (True, False):  # the create of an absent key, then a put at a revision
        first, second = store.txn(), store.txn()
        assert await quota.adjust(store, first, "p", 5) == (5 if absent else 10)
        assert await quota.adjust(store, second, "p", 7) == (7 if absent else 12)
        await first.commit()
        try:
            await second.commit()
        except Aborted:
            pass
        else:
            raise AssertionError("both counted from the same value")
        assert await quota.used_gib(store, "p") == (5 if absent else 10)


async def test_a_counter_never_goes_below_zero_and_can_be_set(etcd_client, etcd_root) -> None:  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    txn = store.txn()
    assert (
        await ledger.adjust(
            store, txn, keys.usage_key(store.root, "p"), records_pb2.ProjectUsage, "share_gib", -3
        )
        == 0
    )
    await txn.commit()
    assert await quota.used_gib(store, "p") == 0

    ids = await ledger.read_export_ids(store, "b")
    txn = store.txn()
    assert ids.set(txn, 41) == 41
    await txn.commit()
    assert (await ledger.read_export_ids(store, "b")).value == 41


async def test_racing_placements_never_overshoot_the_share_count(etcd_client, etcd_root) -> None:  # type: ignore[no-untyped-def]
    # Placements as two schedulers would make them (a handover: no lock between them),
    # each share written placed in the txn that reserves it; the limit is 3 shares.
    store = Store(etcd_client, etcd_root)
    quotas = QuotaConfig(project_shares={"p": 3})

    async def place(i: int) -> tuple[bool, int]:
        """Retries on a lost race; (placed or refused, races lost)."""
        record = share_in(f"projects/p/shares/s{i}", placed_on=POOL)
        lost = 0
        while True:
            txn = store.txn().create(store.key_of(record.spec.share.name), record)
            try:
                await quota.reserve_share(store, txn, quotas, "p", 1)
                await txn.commit()
                return True, lost
            except ResourceExhausted:
                return False, lost
            except Aborted:
                lost += 1

    results = await asyncio.gather(*(place(i) for i in range(10)))
    assert sum(placed for placed, _ in results) == 3
    assert sum(lost for _, lost in results) > 0, "the placements never raced"
    usage = await quota.usage(store, "p")
    assert (usage.shares, usage.share_gib) == (3, 3)
    assert await quota.count_shares(store, "p") == 3  # the record counts what is there
