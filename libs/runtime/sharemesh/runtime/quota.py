"""Project quotas: what a project's shares hold is kept beside them in etcd, changed in
the same transaction as the shares' own `allocated_gib`, and checked against its limit.
Snapshots count the same way: their number and their GiB, reserved in the transaction
that records the snapshot and given back in the one that removes it."""

from __future__ import annotations

from . import ledger
from .config import QuotaConfig
from .coordination import Store, Txn
from .errors import ResourceExhausted


async def used_gib(store: Store, project: str) -> int:
    return (await ledger.read_usage(store, project)).value


def check(quotas: QuotaConfig, project: str, used: int, more_gib: int) -> None:
    """Raises RESOURCE_EXHAUSTED if `more_gib` would take the project over its limit."""
    limit = quotas.limit_gib(project)
    if limit and used + more_gib > limit:
        message = (
            f"project {project} has {used} of its {limit} GiB quota in use; "
            f"{more_gib} GiB more do not fit: delete or shrink a share, or ask for more quota"
        )
        raise ResourceExhausted(
            message,
            reason="QUOTA_EXCEEDED",
            metadata={"project": project, "limit_gib": str(limit)},
            quota_violations=[(f"projects/{project}", message)],
        )


async def adjust(store: Store, txn: Txn, project: str, delta_gib: int) -> int:
    """Adds to `txn` the change of the project's usage by `delta_gib`, compared with the
    value read, so a concurrent change makes the txn fail (retry). Returns the new usage."""
    return (await ledger.read_usage(store, project)).add(txn, delta_gib)


async def reserve_snapshot(
    store: Store, txn: Txn, quotas: QuotaConfig, project: str, size_gib: int
) -> None:
    """Adds to `txn` one more snapshot of `size_gib` for the project, or raises
    RESOURCE_EXHAUSTED naming the quota it would exceed; compared with the usage read,
    so racing snapshots cannot together overshoot it."""
    usage = await ledger.read_usage(store, project, "snapshots")
    held = usage.found.value if usage.found else None
    count, gib = (held.snapshots, held.snapshot_gib) if held else (0, 0)
    for name, used, more, limit in (
        ("snapshots", count, 1, quotas.limit_snapshots(project)),
        ("snapshot_gib", gib, size_gib, quotas.limit_snapshot_gib(project)),
    ):
        if limit and used + more > limit:
            message = (
                f"project {project} has {used} of its {limit} {name} quota in use; "
                f"a snapshot of {size_gib} GiB does not fit: delete a snapshot, or ask for more"
            )
            raise ResourceExhausted(
                message,
                reason="QUOTA_EXCEEDED",
                metadata={"project": project, "quota": name, "limit": str(limit)},
                quota_violations=[(f"projects/{project}", message)],
            )
    usage.add(txn, 1, snapshot_gib=size_gib)


async def release_snapshot(store: Store, txn: Txn, project: str, size_gib: int) -> None:
    """Adds to `txn` the return of one snapshot of `size_gib` to the project's usage."""
    (await ledger.read_usage(store, project, "snapshots")).add(txn, -1, snapshot_gib=-size_gib)
