"""The mesh's schema migrations (DESIGN.md §5): ordered steps that bring older records
to the schema this code writes, run by the scheduler's leader before it places.

Every record carries a schema version (records.proto); the mesh's own is the last step
done, kept at `{root}schema` with the progress of the running step. Services that
need migrated data wait with `wait_for(store, SCHEMA)`."""

from __future__ import annotations

from sharemesh.runtime.coordination import Store
from sharemesh.state.v1 import records_pb2

from . import _v2_index, _v3_share_counts, _v4_spec_status
from ._runner import Step, mesh_version, schema_key, wait_for
from ._runner import run as _run

STEPS: tuple[Step, ...] = (
    Step(
        _v2_index.VERSION,
        "index keys for the shares placed before the per-backend index",
        "shares/",
        records_pb2.ShareRecord,
        _v2_index.index_placed_shares,
    ),
    Step(
        _v3_share_counts.VERSION,
        "each project's usage counts its shares (GetQuota and the share limit read it)",
        _v3_share_counts.PREFIX,
        records_pb2.ProjectUsage,
        _v3_share_counts.count_shares,
    ),
    Step(
        _v4_spec_status.VERSION,
        "share records keep what is asked (spec) and what is true (status) apart",
        "shares/",
        records_pb2.ShareRecord,
        _v4_spec_status.split_share_records,
    ),
)
# The schema this code writes and needs.
SCHEMA = STEPS[-1].version


async def run(store: Store, fence: object) -> int:
    """Every migration the mesh has not done, each write fenced by `fence` (the
    leader's); the mesh's schema version after."""
    return await _run(store, STEPS, fence)


__all__ = ["SCHEMA", "STEPS", "Step", "mesh_version", "run", "schema_key", "wait_for"]
