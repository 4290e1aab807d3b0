"""etcd coordination for sharemesh: sessions, elections, mutexes, and a typed record store.

Mirrors etcd's `client/v3/concurrency` on top of aetcd (DESIGN.md §5, §6)."""

from . import _keys as keys
from ._client import Compare, Fence, connect
from ._election import Election, Leadership, leader, observe
from ._mutex import Mutex
from ._session import Session
from ._store import DEFAULT_ROOT, Store, Txn, Versioned, WatchEvent

__all__ = [
    "DEFAULT_ROOT",
    "Compare",
    "Election",
    "Fence",
    "Leadership",
    "Mutex",
    "Session",
    "Store",
    "Txn",
    "Versioned",
    "WatchEvent",
    "connect",
    "keys",
    "leader",
    "observe",
]
