"""Project quotas: what a project's shares hold is kept beside them in etcd, changed in
the same transaction as the shares' own `allocated_gib`, and checked against its limit."""

from __future__ import annotations

from sharemesh.state.v1.records_pb2 import ProjectUsage

from .config import QuotaConfig
from .coordination import Store, Txn, keys
from .errors import ResourceExhausted


async def used_gib(store: Store, project: str) -> int:
    found = await store.get(keys.usage_key(store.root, project), ProjectUsage)
    return found.value.share_gib if found else 0


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
    key = keys.usage_key(store.root, project)
    found = await store.get(key, ProjectUsage)
    used = max((found.value.share_gib if found else 0) + delta_gib, 0)
    txn.put(key, ProjectUsage(share_gib=used), found.mod_revision if found else None)
    if found is None:
        txn.check(key, 0)
    return used
