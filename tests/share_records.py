"""Share records in a given state, for tests that write records straight into etcd or
a cache: each made by the lifecycle's own transitions, so its state is derived as the
mesh derives it."""

from __future__ import annotations

from sharemesh.runtime import lifecycle
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_pb2

Share = share_pb2.Share


def share_in(
    name: str,
    state: int = Share.CREATING,
    *,
    size_gib: int = 1,
    placed_on: str = "",
    **asked: str,
) -> records_pb2.ShareRecord:
    """A share `name` (`projects/{p}/shares/{s}`) in `state`, of `size_gib`, placed on
    the pool `placed_on` (`backends/{b}/pools/{p}`) if given (any state but CREATING
    needs one), with the asked fields of `asked` (share_network, share_type...)."""
    record = records_pb2.ShareRecord(project=name.split("/")[1])
    record.spec.share.name, record.spec.share.size_gib = name, size_gib
    for field, value in asked.items():
        setattr(record.spec.share, field, value)
    lifecycle.share.requested(record)
    if placed_on:
        backend = placed_on.rsplit("/pools/", 1)[0]
        lifecycle.share.placed(
            record, backend=backend, pool=placed_on, export_id=0, thick=False, availability_zone=""
        )
    if state == Share.CREATING:
        return record
    lifecycle.share.realized(record)
    if state == Share.UPDATING:
        lifecycle.share.reset(record, Share.ACTIVE)
    elif state == Share.DELETING:
        lifecycle.share.delete_requested(record, force=False)
    elif state == Share.ERROR:
        lifecycle.share.failed(record, "failed on the backend")
    assert lifecycle.share.state(record) == state
    return record
