"""Project quotas: what a project's shares hold (their GiB, and how many hold a place) is
kept beside them in etcd, changed in the same transaction as the shares' own
`allocated_gib`, and checked against its limit.
Snapshots count the same way: their number and their GiB, reserved in the transaction
that records the snapshot and given back in the one that removes it.

A limit is the config file's (`[quotas]`) unless an admin set the project's own through
the API (`QuotaLimitsRecord` in etcd). The checks that decide read that record in the
transaction's own round; the api's first looks read a watch-fed copy (`LiveLimits`)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator, Mapping

from sharemesh.state.v1 import auth_pb2, records_pb2
from sharemesh.v1 import project_pb2

from . import ledger, names
from .config import QuotaConfig
from .controllers import Informer
from .coordination import Store, Txn, Versioned, keys
from .errors import ResourceExhausted

# The schema version of `ProjectUsage` from which it counts the project's shares (the
# migration to it counts those of older records, see `migrations`).
SHARES_COUNTED = 3
# The quota's amounts, as named in `QuotaAmounts` and `QuotaLimitsRecord`.
AMOUNTS = ("shares", "share_gib", "snapshots", "snapshot_gib", "share_networks")
# A guard key that every share network create of a project writes, so that racing
# creates conflict and each counts the others' networks.
_NETWORK_GUARD = "share_networks"


def limits_key(root: str, project: str) -> str:
    """The limits an admin set for a project."""
    return f"{root}quotaLimits/{keys.check_segment(project, 'project')}"


def _guard_key(root: str, project: str, what: str) -> str:
    return f"{root}quotaGuards/{keys.check_segment(project, 'project')}/{what}"


def configured(quotas: QuotaConfig, project: str) -> project_pb2.QuotaAmounts:
    return project_pb2.QuotaAmounts(
        shares=quotas.limit_shares(project),
        share_gib=quotas.limit_gib(project),
        snapshots=quotas.limit_snapshots(project),
        snapshot_gib=quotas.limit_snapshot_gib(project),
        share_networks=quotas.limit_share_networks(project),
    )


def effective(
    quotas: QuotaConfig, project: str, found: auth_pb2.QuotaLimitsRecord | None
) -> project_pb2.QuotaAmounts:
    """The limits in force: those set for the project, else the config's."""
    limits = configured(quotas, project)
    for amount in AMOUNTS:
        if found is not None and found.HasField(amount):
            setattr(limits, amount, getattr(found, amount))
    return limits


async def read_limits(store: Store, project: str) -> Versioned[auth_pb2.QuotaLimitsRecord] | None:
    return await store.get(limits_key(store.root, project), auth_pb2.QuotaLimitsRecord)


async def limits(store: Store, quotas: QuotaConfig, project: str) -> project_pb2.QuotaAmounts:
    found = await read_limits(store, project)
    return effective(quotas, project, found.value if found else None)


class _SetLimits(Mapping[str, int]):
    """One amount's per-project limits: those set through the API (`records`, read at
    each lookup) over the config's (`configured`)."""

    def __init__(
        self,
        records: Mapping[str, auth_pb2.QuotaLimitsRecord],
        amount: str,
        configured: Mapping[str, int],
    ) -> None:
        self._records, self._amount, self._configured = records, amount, configured

    def __getitem__(self, project: str) -> int:
        record = self._records.get(project)
        if record is not None and record.HasField(self._amount):
            return int(getattr(record, self._amount))
        return self._configured[project]

    def __iter__(self) -> Iterator[str]:
        set_here = {p for p, r in self._records.items() if r.HasField(self._amount)}
        return iter(set_here | set(self._configured))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def live(quotas: QuotaConfig, records: Mapping[str, auth_pb2.QuotaLimitsRecord]) -> QuotaConfig:
    """The config's quotas with the limits set through the API over them, read from
    `records` (project -> record) at each check, so a watch that keeps `records`
    current keeps the returned config current too."""

    def over(amount: str, configured: Mapping[str, int]) -> Mapping[str, int]:
        return _SetLimits(records, amount, configured)

    return dataclasses.replace(
        quotas,
        project_shares=over("shares", quotas.project_shares),
        projects=over("share_gib", quotas.projects),
        project_snapshots=over("snapshots", quotas.project_snapshots),
        project_snapshot_gib=over("snapshot_gib", quotas.project_snapshot_gib),
        project_share_networks=over("share_networks", quotas.project_share_networks),
    )


class LiveLimits:
    """The config's quotas with the limits set through the API over them, kept current
    by a watch: for the api's checks, which read limits without an etcd round trip."""

    def __init__(self, store: Store, quotas: QuotaConfig) -> None:
        self._records: dict[str, auth_pb2.QuotaLimitsRecord] = {}
        self.quotas = live(quotas, self._records)
        self._prefix = f"{store.root}quotaLimits/"
        self._informer = Informer(
            store, self._prefix, auth_pb2.QuotaLimitsRecord, name="quota limits"
        )
        self._informer.add_handler(self._changed)

    def _changed(
        self,
        old: Versioned[auth_pb2.QuotaLimitsRecord] | None,
        new: Versioned[auth_pb2.QuotaLimitsRecord] | None,
    ) -> None:
        found = new or old
        assert found is not None
        project = found.key[len(self._prefix) :]
        if new is None:
            self._records.pop(project, None)
        else:
            self._records[project] = new.value

    async def run(self) -> None:
        await self._informer.run()


def _exceeded(project: str, amount: str, used: int, limit: int, wanted: str) -> ResourceExhausted:
    message = (
        f"project {project} has {used} of its {limit} {amount} quota in use; "
        f"{wanted} does not fit: delete something, or ask for more quota"
    )
    return ResourceExhausted(
        message,
        reason="QUOTA_EXCEEDED",
        metadata={"project": project, "quota": amount, "limit": str(limit)},
        quota_violations=[(f"projects/{project}", message)],
    )


def check_amount(project: str, amount: str, used: int, more: int, limit: int) -> None:
    """Raises RESOURCE_EXHAUSTED if `more` of `amount` would take the project over
    `limit` (0: no limit)."""
    if limit and used + more > limit:
        unit = " GiB" if amount.endswith("_gib") else ""
        raise _exceeded(project, amount, used, limit, f"{more}{unit} more")


async def used_gib(store: Store, project: str) -> int:
    return (await ledger.read_usage(store, project)).value


def check(quotas: QuotaConfig, project: str, used: int, more_gib: int) -> None:
    """Raises RESOURCE_EXHAUSTED if `more_gib` would take the project over its limit."""
    check_amount(project, "share_gib", used, more_gib, quotas.limit_gib(project))


async def adjust(store: Store, txn: Txn, project: str, delta_gib: int, shares: int = 0) -> int:
    """Adds to `txn` the change of the project's usage by `delta_gib` (and of its count
    of shares that hold a place by `shares`), compared with the value read, so a
    concurrent change makes the txn fail (retry). Returns the new usage in GiB."""
    return (await ledger.read_usage(store, project)).add(txn, delta_gib, shares=shares)


def holds_place(record: records_pb2.ShareRecord) -> bool:
    """Whether the share counts against its project's share limit: it is placed and
    holds its GiB. A create undone on its pool gave its GiB, and so its place, back;
    each change of this is written with the GiB's, so the usage record counts it."""
    return record.allocated_gib > 0


async def count_shares(store: Store, project: str) -> int:
    """The project's shares that hold a place, counted from their records: O(project),
    for a usage record older than its count only (see `shares_held`)."""
    found, _ = await store.list_all(
        store.prefix_of(names.PROJECT.format(project=project), "shares"), records_pb2.ShareRecord
    )
    return sum(1 for f in found if holds_place(f.value))


async def shares_held(
    store: Store, project: str, usage: Versioned[records_pb2.ProjectUsage] | None
) -> int:
    """The project's shares that hold a place, as its usage record (read) counts them.
    A record from before the count (its schema older than SHARES_COUNTED, until the
    scheduler's migration counts it) has them counted from the shares instead."""
    if usage is None:
        return 0  # no share ever held GiB
    if usage.value.schema_version >= SHARES_COUNTED:
        return int(usage.value.shares)
    return await count_shares(store, project)


async def _share_networks(store: Store, project: str) -> int:
    found, _ = await store.list_all(
        store.prefix_of(names.PROJECT.format(project=project), "shareNetworks"),
        records_pb2.ShareNetworkRecord,
    )
    return len(found)


async def reserve_share(
    store: Store, txn: Txn, quotas: QuotaConfig, project: str, size_gib: int
) -> None:
    """Adds to `txn` the reservation of one more share of `size_gib` (being placed), or
    raises RESOURCE_EXHAUSTED naming the quota it would exceed. Its GiB and the count of
    shares are both compared with the usage record as read, so racing placements cannot
    together overshoot either."""
    limit, usage = await asyncio.gather(  # one read (coordination batches them)
        limits(store, quotas, project), ledger.read_usage(store, project)
    )
    check_amount(project, "share_gib", usage.value, size_gib, limit.share_gib)
    if limit.shares:
        held = await shares_held(store, project, usage.found)
        check_amount(project, "shares", held, 1, limit.shares)
    usage.add(txn, size_gib, shares=1)


async def reserve_share_network(store: Store, txn: Txn, quotas: QuotaConfig, project: str) -> None:
    """Adds to `txn` one more share network for the project, or raises RESOURCE_EXHAUSTED.
    Racing creates all write the project's guard key compared at its revision as read,
    so only one of them commits per round, and a retry counts the winner."""
    limit = (await limits(store, quotas, project)).share_networks
    if not limit:
        return
    guard = _guard_key(store.root, project, _NETWORK_GUARD)
    held = await store.get(guard, project_pb2.QuotaAmounts)
    count = await _share_networks(store, project)
    check_amount(project, "share_networks", count, 1, limit)
    txn.put(
        guard,
        project_pb2.QuotaAmounts(share_networks=count + 1),
        held.mod_revision if held else None,
    )
    if held is None:
        txn.check(guard, 0)


async def reserve_snapshot(
    store: Store, txn: Txn, quotas: QuotaConfig, project: str, size_gib: int
) -> None:
    """Adds to `txn` one more snapshot of `size_gib` for the project, or raises
    RESOURCE_EXHAUSTED naming the quota it would exceed; compared with the usage read,
    so racing snapshots cannot together overshoot it."""
    limit, usage = await asyncio.gather(
        limits(store, quotas, project), ledger.read_usage(store, project, "snapshots")
    )
    held = usage.found.value if usage.found else None
    count, gib = (held.snapshots, held.snapshot_gib) if held else (0, 0)
    wanted = f"a snapshot of {size_gib} GiB"
    if limit.snapshots and count + 1 > limit.snapshots:
        raise _exceeded(project, "snapshots", count, limit.snapshots, wanted)
    if limit.snapshot_gib and gib + size_gib > limit.snapshot_gib:
        raise _exceeded(project, "snapshot_gib", gib, limit.snapshot_gib, wanted)
    usage.add(txn, 1, snapshot_gib=size_gib)


async def release_snapshot(store: Store, txn: Txn, project: str, size_gib: int) -> None:
    """Adds to `txn` the return of one snapshot of `size_gib` to the project's usage."""
    (await ledger.read_usage(store, project, "snapshots")).add(txn, -1, snapshot_gib=-size_gib)


async def usage(store: Store, project: str) -> project_pb2.QuotaAmounts:
    """What the project holds now, as its quota counts it."""
    held = (await ledger.read_usage(store, project)).found
    record = held.value if held else records_pb2.ProjectUsage()
    return project_pb2.QuotaAmounts(
        shares=await shares_held(store, project, held),
        share_gib=record.share_gib,
        snapshots=record.snapshots,
        snapshot_gib=record.snapshot_gib,
        share_networks=await _share_networks(store, project),
    )
