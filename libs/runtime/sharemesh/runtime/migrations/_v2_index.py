"""Schema 2: a placed share has its index keys.

Since the core rework the scheduler writes `{root}index/backends/{backend}/…` in the
transaction that places a share, and a driver-host finds its shares only through it
(a gateway finds its shares through `{root}index/hosts/{host}/…`). Shares placed
before have neither: without this step their backend would never serve them again."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from sharemesh.runtime.coordination import Store, Txn, Versioned, keys
from sharemesh.runtime.coordination import _client as etcd
from sharemesh.state.v1 import records_pb2

VERSION = 2


def index_keys(root: str, record: records_pb2.ShareRecord) -> list[str]:
    """The index keys a share needs, as placement and its driver-host write them."""
    if not record.placement.backend:
        return []  # not placed: the scheduler writes them when it places it
    share, host = record.spec.share, record.status.host
    backend = record.placement.backend.split("/")[-1]
    found = [keys.backend_index_key(root, backend, share.name, share.share_network)]
    if host and share.share_network:
        found.append(keys.host_index_key(root, host, share.share_network, share.name))
    return found


async def _present(store: Store, wanted: list[str]) -> set[str]:
    """Which of `wanted` exist: one read-only transaction, a key-only range each."""
    if not wanted:
        return set()
    reads = [etcd.op_range(etcd.range_request(key, keys_only=True)) for key in wanted]
    response = await etcd.txn(store.client, [], reads)
    return {key for key, read in zip(wanted, response.responses) if read.response_range.kvs}


async def index_placed_shares(store: Store, txn: Txn, page: Sequence[Versioned[Message]]) -> int:
    """Writes the missing index keys of the page's placed shares and brings each share
    to schema 2, each compared with its revision as read. Idempotent: a share whose
    keys are there and that is at schema 2 is left alone."""
    shares = [(f, f.value) for f in page if isinstance(f.value, records_pb2.ShareRecord)]
    needed = {found.key: index_keys(store.root, record) for found, record in shares}
    present = await _present(store, [key for wanted in needed.values() for key in wanted])
    changed = 0
    for found, record in shares:
        missing = [key for key in needed[found.key] if key not in present]
        if not missing and record.schema_version >= VERSION:
            continue
        for key in missing:
            txn.put(key, empty_pb2.Empty())
        record.schema_version = VERSION
        txn.put(found.key, record, found.mod_revision)
        changed += 1
    return changed
