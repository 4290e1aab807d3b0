"""Project quotas: what a project's shares hold is kept beside them in etcd, changed in
the same transaction as the shares' own `allocated_gib`, and checked against its limit."""

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
