"""The driver-host's ShareSync against a real etcd and the in-memory fake driver: every
transition of the share lifecycle the driver-host makes, its retries and its races.

The tests write the records the api and the scheduler would (through the lifecycle and
the ledger, as they do) and call `ShareSync.sync` directly, without gRPC or a launcher.
They check what a tenant or an operator would: the share's record, its Operations, the
pool's and the project's counters, the export ids, and the backend as a client sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
import pytest_asyncio
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2

from sharemesh.driver_host._sync import ShareSync
from sharemesh.driver_host.drivers import FakeDriver
from sharemesh.driver_host.drivers.fake import FakeBackend, FakeDriverConfig
from sharemesh.ganesha import share_pseudo
from sharemesh.runtime import errors, ledger, lifecycle, operations, quota
from sharemesh.runtime.config import QuotaConfig
from sharemesh.runtime.coordination import Session, Store, Txn, Versioned, keys
from sharemesh.runtime.errors import (
    Aborted,
    FailedPrecondition,
    Internal,
    NotFound,
    ShareMeshError,
    Unavailable,
)
from sharemesh.runtime.lifecycle.share import public
from sharemesh.runtime.peers import Peers
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import access_rule_pb2, share_pb2, snapshot_pb2

Share = share_pb2.Share
AccessRule = access_rule_pb2.AccessRule
PROJECT = "p"
TTL = 2
MAX_ATTEMPTS = 2  # a create is tried on two pools, then fails
DEADLINE = 30.0  # far beyond any test's retries, except where a test sets its own
CLIENT = "10.0.0.5"  # a tenant's client, inside the rules' 10.0.0.0/24
HOST_PATH = "/var/lib/sharemesh/pools/default/images"
R = TypeVar("R", share_pb2.Share, access_rule_pb2.AccessRule)


@dataclass
class Mesh:
    """One etcd root with fake backends (`a` and `b`, and any a test adds), each with
    its ShareSync; the records are written as the api and the scheduler write them."""

    store: Store
    session: Session
    peers: Peers
    drivers: dict[str, FakeDriver] = field(default_factory=dict)
    syncs: dict[str, ShareSync] = field(default_factory=dict)

    def add_backend(self, backend: str, *, deadline: float = DEADLINE) -> ShareSync:
        # Backend `a` offers snapshots (taken, cloned, reverted to, mountable) and shrinks;
        # `b` neither.
        config = FakeDriverConfig(snapshot_support=backend == "a", shrink_support=backend == "a")
        driver = FakeDriver(config, FakeBackend())
        self.drivers[backend] = driver
        self.syncs[backend] = self.sync_for(backend, driver, self.session, deadline)
        return self.syncs[backend]

    def sync_for(
        self, backend: str, driver: FakeDriver, session: Session, deadline: float = DEADLINE
    ) -> ShareSync:
        return ShareSync(
            self.store,
            session,
            driver,
            f"backends/{backend}",
            self.peers,
            MAX_ATTEMPTS,
            "host-1",
            deadline,
        )

    # ---- what the api writes -----------------------------------------------------------

    async def _request(
        self,
        target: str,
        verb: str,
        write: Callable[[Txn, records_pb2.OperationRecord], Awaitable[None]],
    ) -> str:
        """One mutation with its Operation in one transaction (the api's Recorder)."""
        op = operations.new(PROJECT, target, verb)
        txn = self.store.txn()
        await write(txn, op)
        txn.create(self.store.key_of(op.operation.name), op)
        await txn.commit()
        return op.operation.name

    def _wait_on(
        self,
        txn: Txn,
        found: Versioned[records_pb2.ShareRecord] | Versioned[records_pb2.AccessRuleRecord],
        op: records_pb2.OperationRecord,
        detail: str,
    ) -> None:
        """The api's wait_on: `op` waits on the record, written as compared when read."""
        found.value.pending_operations.append(op.operation.name)
        operations.set_progress(op, detail, 10)
        txn.put(found.key, found.value, found.mod_revision)

    async def create_share(self, share_id: str, size_gib: int) -> tuple[str, str]:
        """CreateShare: (the share's name, its create Operation's name)."""
        name = f"projects/{PROJECT}/shares/{share_id}"

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            record = records_pb2.ShareRecord(
                project=PROJECT, pending_operations=[op.operation.name]
            )
            record.spec.share.name = name
            record.spec.share.uid = f"uid{share_id}"
            record.spec.share.size_gib = size_gib
            record.spec.share.protocol = Share.NFS
            record.spec.share.share_type = "shareTypes/default"
            lifecycle.share.requested(record)
            operations.set_progress(op, "waiting for placement", 5)
            txn.create(self.store.key_of(name), record)

        return name, await self._request(name, "create", write)

    async def place(self, name: str, backend: str) -> None:
        """The scheduler's placement on the backend's one pool: the quota and the pool's
        allocation reserved, an export id taken, the backend's index key written."""
        found = await self.share(name)
        record = found.value
        size = public(record).size_gib
        pool = f"backends/{backend}/pools/default"
        txn = self.store.txn()
        await quota.adjust(self.store, txn, PROJECT, size, shares=1)
        (await ledger.read_pool(self.store, pool)).add(txn, size)
        ids = await ledger.read_export_ids(self.store, backend)
        export_id = ids.set(txn, ids.value + 1)
        lifecycle.share.placed(
            record,
            backend=f"backends/{backend}",
            pool=pool,
            export_id=export_id,
            thick=False,
            availability_zone="",
        )
        txn.put(found.key, record, found.mod_revision)
        txn.put(keys.backend_index_key(self.store.root, backend, name), empty_pb2.Empty())
        await txn.commit()

    async def resize(self, name: str, size_gib: int) -> str:
        """ResizeShare of an ACTIVE share: quota and allocation move at once."""

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            found = await self.share(name)
            record = found.value
            delta = size_gib - public(record).size_gib
            await quota.adjust(self.store, txn, PROJECT, delta)
            (await ledger.read_pool(self.store, record.placement.pool)).add(txn, delta)
            record.allocated_gib += lifecycle.share.resize_requested(record, size_gib)
            self._wait_on(txn, found, op, f"resizing to {size_gib} GiB")

        return await self._request(name, "resize", write)

    async def delete(self, name: str, *, force: bool = False) -> str:
        """DeleteShare of a placed share."""

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            found = await self.share(name)
            lifecycle.share.delete_requested(found.value, force)
            self._wait_on(txn, found, op, "deleting on the backend")

        return await self._request(name, "delete", write)

    async def reset(self, name: str) -> str:
        """An administrator's ResetShareState to ACTIVE."""

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            found = await self.share(name)
            lifecycle.share.reset(found.value, Share.ACTIVE)
            stopped = Aborted(f"{name} was reset to ACTIVE by an administrator")
            pending = list(found.value.pending_operations)
            del found.value.pending_operations[:]
            await operations.finish_pending(self.store, txn, pending, error=stopped)
            self._wait_on(txn, found, op, "making it true again")

        return await self._request(name, "reset", write)

    async def add_rule(self, share: str, rule_id: str, access_to: str, level: int) -> str:
        """CreateAccessRule: the share is written too, as the api does."""
        name = f"{share}/accessRules/{rule_id}"

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            found = await self.share(share)
            record = records_pb2.AccessRuleRecord(pending_operations=[op.operation.name])
            record.rule.name = name
            record.rule.access_to = access_to
            record.rule.access_level = level  # type: ignore[assignment]
            lifecycle.access_rule.requested(record)
            txn.put(found.key, found.value, found.mod_revision)
            txn.create(self.store.key_of(name), record)

        return await self._request(name, "create", write)

    async def update_rule(self, name: str, level: int) -> str:
        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            found = await self.rule(name)
            assert found is not None
            lifecycle.access_rule.update_requested(found.value, level)
            self._wait_on(txn, found, op, "applying the export's client list")

        return await self._request(name, "update", write)

    async def delete_rule(self, name: str) -> str:
        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            found = await self.rule(name)
            assert found is not None
            lifecycle.access_rule.delete_requested(found.value)
            self._wait_on(txn, found, op, "removing the client from the export")

        return await self._request(name, "delete", write)

    async def take_snapshot(self, share: str, snapshot_id: str) -> tuple[str, str]:
        """CreateSnapshot: its quota reserved and the share written, as the api does."""
        name = f"{share}/snapshots/{snapshot_id}"

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            found = await self.share(share)
            size = public(found.value).size_gib
            await quota.reserve_snapshot(self.store, txn, QuotaConfig(), PROJECT, size)
            record = records_pb2.SnapshotRecord(
                project=PROJECT, pending_operations=[op.operation.name]
            )
            record.snapshot.name = name
            record.snapshot.uid = f"snap{snapshot_id}"
            lifecycle.snapshot.requested(record, size)
            txn.create(self.store.key_of(name), record)
            txn.put(found.key, found.value, found.mod_revision)

        return name, await self._request(name, "create", write)

    async def delete_snapshot(self, name: str) -> str:
        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            found = await self.snapshot(name)
            assert found is not None
            lifecycle.snapshot.delete_requested(found.value)
            found.value.pending_operations.append(op.operation.name)
            txn.put(found.key, found.value, found.mod_revision)

        return await self._request(name, "delete", write)

    async def revert(self, share: str, snapshot: str) -> str:
        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            found = await self.share(share)
            lifecycle.share.revert_requested(found.value, snapshot)
            self._wait_on(txn, found, op, "reverting")

        return await self._request(share, "revert", write)

    async def snapshot(self, name: str) -> Versioned[records_pb2.SnapshotRecord] | None:
        return await self.store.get(self.store.key_of(name), records_pb2.SnapshotRecord)

    async def snapshot_usage(self) -> tuple[int, int]:
        found = await ledger.read_usage(self.store, PROJECT, "snapshots")
        held = found.found.value if found.found else records_pb2.ProjectUsage()
        return held.snapshots, held.snapshot_gib

    # ---- what a tenant or an operator reads --------------------------------------------

    async def share(self, name: str) -> Versioned[records_pb2.ShareRecord]:
        found = await self.found(name)
        assert found is not None, f"{name} is gone"
        return found

    async def found(self, name: str) -> Versioned[records_pb2.ShareRecord] | None:
        return await self.store.get(self.store.key_of(name), records_pb2.ShareRecord)

    async def rule(self, name: str) -> Versioned[records_pb2.AccessRuleRecord] | None:
        return await self.store.get(self.store.key_of(name), records_pb2.AccessRuleRecord)

    async def op(self, name: str) -> records_pb2.OperationRecord:
        found = await self.store.get(self.store.key_of(name), records_pb2.OperationRecord)
        assert found is not None, f"{name} is gone"
        return found.value

    async def done(self, name: str) -> None:
        """Asserts the operation succeeded."""
        await self._succeeded(name)

    async def response(self, name: str, kind: type[R]) -> R:
        """The response of the operation, which succeeded."""
        value = kind()
        assert (await self._succeeded(name)).response.Unpack(value)
        return value

    async def _succeeded(self, name: str) -> operations_pb2.Operation:
        record = await self.op(name)
        assert record.operation.done, f"{name} still waits"
        assert not record.operation.HasField("error"), record.operation.error
        return record.operation

    async def failed(self, name: str) -> ShareMeshError:
        """The operation's error, asserting it failed."""
        record = await self.op(name)
        assert record.operation.done, f"{name} still waits"
        assert record.operation.HasField("error"), f"{name} succeeded"
        return errors.from_status(record.operation.error)

    async def allocated(self, backend: str) -> int:
        return (await ledger.read_pool(self.store, f"backends/{backend}/pools/default")).value

    async def used(self) -> int:
        return await quota.used_gib(self.store, PROJECT)

    async def shares(self) -> int:
        """The project's shares that hold a place, as GetQuota shows them."""
        return (await quota.usage(self.store, PROJECT)).shares

    async def released_ids(self, backend: str) -> list[int]:
        found, _ = await self.store.list_all(
            keys.released_export_ids_prefix(self.store.root, backend), records_pb2.ReleasedExportId
        )
        return [r.value.export_id for r in found]

    async def indexed(self, backend: str) -> list[str]:
        found, _ = await self.store.list_all(
            keys.backend_index_prefix(self.store.root, backend), empty_pb2.Empty
        )
        return [keys.share_of_index_key(r.key) for r in found]

    async def active(self, share_id: str, size_gib: int = 2, backend: str = "a") -> str:
        """A share created, placed and realized: ACTIVE on `backend`."""
        name, _ = await self.create_share(share_id, size_gib)
        await self.place(name, backend)
        await self.syncs[backend].sync(name)
        assert public((await self.share(name)).value).state == Share.ACTIVE
        return name


@pytest_asyncio.fixture
async def mesh(etcd_client, etcd_root) -> AsyncIterator[Mesh]:  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    peers = Peers(store)  # no scheduler leads: a nudge to place waits for its reconcile
    async with Session(etcd_client, TTL) as session:
        mesh = Mesh(store, session, peers)
        mesh.add_backend("a")
        mesh.add_backend("b")
        try:
            yield mesh
        finally:
            for sync in mesh.syncs.values():
                sync.stop()
            await peers.close()


@contextlib.contextmanager
def states_seen(mesh: Mesh, name: str) -> Iterator[set[int]]:
    """The states the share's record is seen in (every 10 ms) while inside."""
    seen: set[int] = set()

    async def watch() -> None:
        while True:
            found = await mesh.found(name)
            if found is not None:
                seen.add(public(found.value).state)
            await asyncio.sleep(0.01)

    task = asyncio.ensure_future(watch())
    try:
        yield seen
    finally:
        task.cancel()


# ---- create ------------------------------------------------------------------------------


async def test_a_placed_share_is_realized_active_with_its_locations(mesh: Mesh) -> None:
    name, op = await mesh.create_share("s1", 2)
    await mesh.place(name, "a")
    assert (await mesh.allocated("a"), await mesh.used()) == (2, 2)

    await mesh.syncs["a"].sync(name)

    record = (await mesh.share(name)).value
    driver = mesh.drivers["a"]
    assert public(record).state == Share.ACTIVE and public(record).state_message == ""
    assert record.status.realized_size_gib == 2 and not record.pending_operations
    assert [(e.path, e.nfs_port, e.mount_port) for e in public(record).export_locations] == [
        (f"127.0.0.1:{share_pseudo('uids1')}", 2049, 20048)
    ]
    response = await mesh.response(op, Share)
    assert response.state == Share.ACTIVE and list(response.export_locations) == list(
        public(record).export_locations
    )
    # Realizing moves no counter: placement reserved them.
    assert (await mesh.allocated("a"), await mesh.used()) == (2, 2)
    assert record.export_id == 1 and await mesh.released_ids("a") == []
    held = driver.backend.shares["uids1"]
    assert held.size_bytes == 2 << 30 and held.exported and held.clients == ()
    assert driver.count("create_share") == 1 and driver.count("update_access") == 0


async def test_a_sync_of_a_share_already_true_writes_nothing(mesh: Mesh) -> None:
    name = await mesh.active("s1")
    before = await mesh.share(name)
    await mesh.syncs["a"].sync(name)
    await mesh.syncs["a"].sync(name)
    after = await mesh.share(name)
    assert after.mod_revision == before.mod_revision
    assert mesh.drivers["a"].count("create_share") == 1


async def test_a_share_placed_on_another_backend_is_left_alone(mesh: Mesh) -> None:
    name, _ = await mesh.create_share("s1", 2)
    await mesh.place(name, "b")
    before = await mesh.share(name)
    await mesh.syncs["a"].sync(name)
    assert (await mesh.share(name)).mod_revision == before.mod_revision
    assert mesh.drivers["a"].calls == []


async def test_a_create_the_backend_refuses_is_placed_elsewhere_then_fails(mesh: Mesh) -> None:
    name, op = await mesh.create_share("s1", 2)
    await mesh.place(name, "a")
    mesh.drivers["a"].fail_next(
        "create_share", FailedPrecondition(f"mkfs.xfs {HOST_PATH}/uids1.img: bad superblock")
    )

    await mesh.syncs["a"].sync(name)

    # Undone on `a`, its capacity and export id given back, waiting for another pool.
    record = (await mesh.share(name)).value
    assert public(record).state == Share.CREATING
    assert public(record).state_message.startswith("retrying on another pool: mkfs.xfs ")
    assert HOST_PATH not in public(record).state_message
    assert "backends/a" not in public(record).state_message  # the pool is for admins
    assert (
        record.placement.backend,
        record.placement.pool,
        public(record).pool,
        record.export_id,
    ) == ("", "", "", 0)
    assert list(record.placement.tried_pools) == ["backends/a/pools/default"]
    assert record.allocated_gib == 0
    assert (await mesh.allocated("a"), await mesh.used(), await mesh.shares()) == (0, 0, 0)
    assert await mesh.released_ids("a") == [1]
    assert await mesh.indexed("a") == []
    assert "uids1" not in mesh.drivers["a"].backend.shares
    assert not (await mesh.op(op)).operation.done  # the create still waits

    # Placed on `b`, it fails there too: at the last attempt, ERROR.
    await mesh.place(name, "b")
    mesh.drivers["b"].fail_next("create_share", Internal(f"{HOST_PATH}/uids1.img: EIO"))
    await mesh.syncs["b"].sync(name)

    record = (await mesh.share(name)).value
    assert public(record).state == Share.ERROR
    # An unexpected failure reads as a generic line; the detail is in the service's log.
    assert public(record).state_message.startswith("the backend failed unexpectedly")
    assert HOST_PATH not in public(record).state_message
    error = await mesh.failed(op)
    assert error.message == public(record).state_message
    assert isinstance(error, Internal)
    assert not record.pending_operations
    # Its create undone, it holds no place either: its project's count gave it back.
    assert (await mesh.allocated("b"), await mesh.used(), await mesh.shares()) == (0, 0, 0)
    assert "uids1" not in mesh.drivers["b"].backend.shares

    # A share in ERROR is left alone until it is deleted.
    before = await mesh.share(name)
    calls = len(mesh.drivers["b"].calls)
    await mesh.syncs["b"].sync(name)
    assert (await mesh.share(name)).mod_revision == before.mod_revision
    assert len(mesh.drivers["b"].calls) == calls

    delete = await mesh.delete(name)
    await mesh.syncs["b"].sync(name)
    assert await mesh.found(name) is None
    await mesh.done(delete)
    assert await mesh.released_ids("b") == [1]
    assert (await mesh.allocated("b"), await mesh.used()) == (0, 0)


# ---- resize -------------------------------------------------------------------------------


async def test_a_grow_is_realized_at_the_new_size(mesh: Mesh) -> None:
    name = await mesh.active("s1", 2)
    op = await mesh.resize(name, 5)
    assert public((await mesh.share(name)).value).state == Share.UPDATING

    await mesh.syncs["a"].sync(name)

    record = (await mesh.share(name)).value
    assert public(record).state == Share.ACTIVE and public(record).size_gib == 5
    assert record.status.realized_size_gib == 5 and record.allocated_gib == 5
    assert (await mesh.response(op, Share)).size_gib == 5
    assert (await mesh.allocated("a"), await mesh.used()) == (5, 5)
    assert mesh.drivers["a"].backend.shares["uids1"].size_bytes == 5 << 30


async def test_a_failed_grow_leaves_the_share_active_at_its_size(mesh: Mesh) -> None:
    name = await mesh.active("s1", 2)
    op = await mesh.resize(name, 5)
    assert (await mesh.allocated("a"), await mesh.used()) == (5, 5)
    mesh.drivers["a"].fail_next(
        "resize_share", FailedPrecondition(f"xfs_growfs {HOST_PATH}/uids1: no room")
    )

    await mesh.syncs["a"].sync(name)

    record = (await mesh.share(name)).value
    assert public(record).state == Share.ACTIVE
    assert (public(record).size_gib, record.status.realized_size_gib, record.allocated_gib) == (
        2,
        2,
        2,
    )
    assert public(record).state_message.startswith("resize to 5 GiB failed: xfs_growfs ")
    assert HOST_PATH not in public(record).state_message
    assert isinstance(await mesh.failed(op), FailedPrecondition)
    # The 3 GiB the resize reserved are given back.
    assert (await mesh.allocated("a"), await mesh.used()) == (2, 2)
    assert mesh.drivers["a"].backend.shares["uids1"].size_bytes == 2 << 30

    # A sync that merely runs again keeps the message (and writes nothing).
    before = await mesh.share(name)
    await mesh.syncs["a"].sync(name)
    assert (await mesh.share(name)).mod_revision == before.mod_revision


async def test_a_grow_whose_export_then_fails_is_in_error_at_the_grown_size(mesh: Mesh) -> None:
    name = await mesh.active("s1", 2)
    op = await mesh.resize(name, 5)
    mesh.drivers["a"].fail_next("update_access", FailedPrecondition("export refused"))

    await mesh.syncs["a"].sync(name)

    # XFS cannot shrink back: the share holds 5 GiB, in ERROR with the reason.
    record = (await mesh.share(name)).value
    assert public(record).state == Share.ERROR
    assert public(record).state_message == "export refused"
    assert (public(record).size_gib, record.status.realized_size_gib, record.allocated_gib) == (
        5,
        5,
        5,
    )
    assert (await mesh.failed(op)).message == "export refused"
    assert (await mesh.allocated("a"), await mesh.used()) == (5, 5)
    assert mesh.drivers["a"].backend.shares["uids1"].size_bytes == 5 << 30


# ---- access rules -----------------------------------------------------------------------


async def test_rules_are_applied_updated_and_deleted(mesh: Mesh) -> None:
    name = await mesh.active("s1")
    backend = mesh.drivers["a"].backend
    rw = await mesh.add_rule(name, "r1", "10.0.0.0/24", AccessRule.READ_WRITE)
    ro = await mesh.add_rule(name, "r2", "10.0.1.7", AccessRule.READ_ONLY)
    rule = f"{name}/accessRules/r1"

    await mesh.syncs["a"].sync(name)

    for op, level in ((rw, AccessRule.READ_WRITE), (ro, AccessRule.READ_ONLY)):
        applied = await mesh.response(op, AccessRule)
        assert applied.state == AccessRule.ACTIVE and applied.access_level == level
    found = await mesh.rule(rule)
    assert found is not None and found.value.rule.state == AccessRule.ACTIVE
    assert not found.value.pending_operations
    assert backend.access("uids1", CLIENT) == "READ_WRITE"
    assert backend.access("uids1", "10.0.1.7") == "READ_ONLY"
    assert public((await mesh.share(name)).value).state == Share.ACTIVE

    update = await mesh.update_rule(rule, AccessRule.READ_ONLY)
    await mesh.syncs["a"].sync(name)
    assert (await mesh.response(update, AccessRule)).access_level == AccessRule.READ_ONLY
    assert backend.access("uids1", CLIENT) == "READ_ONLY"

    delete = await mesh.delete_rule(rule)
    await mesh.syncs["a"].sync(name)
    await mesh.done(delete)
    assert await mesh.rule(rule) is None
    assert backend.access("uids1", CLIENT) is None
    assert backend.access("uids1", "10.0.1.7") == "READ_ONLY"
    record = (await mesh.share(name)).value
    assert public(record).state == Share.ACTIVE and not record.pending_operations


async def test_a_rule_change_the_backend_refuses_fails_the_rule(mesh: Mesh) -> None:
    name = await mesh.active("s1")
    await mesh.add_rule(name, "r0", "10.0.1.7", AccessRule.READ_ONLY)
    await mesh.syncs["a"].sync(name)
    op = await mesh.add_rule(name, "r1", "10.0.0.0/24", AccessRule.READ_WRITE)
    mesh.drivers["a"].fail_next(
        "update_access", FailedPrecondition(f"ganesha rejected {HOST_PATH}/export.conf")
    )

    await mesh.syncs["a"].sync(name)

    error = await mesh.failed(op)
    assert isinstance(error, FailedPrecondition) and HOST_PATH not in error.message
    found = await mesh.rule(f"{name}/accessRules/r1")
    assert found is not None and found.value.rule.state == AccessRule.ERROR
    assert found.value.rule.state_message == error.message
    assert not found.value.pending_operations
    # The rule that was in force stays so, on the record and on the export.
    kept = await mesh.rule(f"{name}/accessRules/r0")
    assert kept is not None and kept.value.rule.state == AccessRule.ACTIVE
    backend = mesh.drivers["a"].backend
    assert backend.access("uids1", "10.0.1.7") == "READ_ONLY"
    assert backend.access("uids1", CLIENT) is None
    share = (await mesh.share(name)).value
    assert not share.pending_operations
    # A rule is not the share: the share keeps serving, and takes further rules.
    assert public(share).state == Share.ACTIVE
    later = await mesh.add_rule(name, "r2", CLIENT, AccessRule.READ_WRITE)
    await mesh.syncs["a"].sync(name)
    await mesh.done(later)
    assert backend.access("uids1", CLIENT) == "READ_WRITE"
    assert backend.access("uids1", "10.0.1.7") == "READ_ONLY"


# ---- delete -------------------------------------------------------------------------------


async def test_a_delete_releases_everything_the_share_held(mesh: Mesh) -> None:
    name = await mesh.active("s1", 3)
    await mesh.add_rule(name, "r1", "10.0.0.0/24", AccessRule.READ_WRITE)
    await mesh.syncs["a"].sync(name)
    assert await mesh.shares() == 1
    waiting = await mesh.add_rule(name, "r2", "10.0.1.0/24", AccessRule.READ_ONLY)
    op = await mesh.delete(name)
    assert public((await mesh.share(name)).value).state == Share.DELETING

    await mesh.syncs["a"].sync(name)

    assert await mesh.found(name) is None
    assert await mesh.rule(f"{name}/accessRules/r1") is None
    assert await mesh.rule(f"{name}/accessRules/r2") is None
    await mesh.done(op)
    # A rule change that waited on the share fails: the share went first.
    assert (await mesh.failed(waiting)).reason == "RESOURCE_DELETED"
    assert (await mesh.allocated("a"), await mesh.used(), await mesh.shares()) == (0, 0, 0)
    assert await mesh.released_ids("a") == [1]
    assert await mesh.indexed("a") == []
    assert mesh.drivers["a"].backend.shares == {}


async def test_a_delete_the_backend_refuses_is_error_and_a_forced_one_drops_it(
    mesh: Mesh,
) -> None:
    name = await mesh.active("s1", 2)
    driver = mesh.drivers["a"]
    driver.fail_next("delete_share", FailedPrecondition(f"{HOST_PATH}/uids1 is busy"))
    op = await mesh.delete(name)

    await mesh.syncs["a"].sync(name)

    record = (await mesh.share(name)).value
    assert public(record).state == Share.ERROR
    assert public(record).state_message.startswith("delete failed: ")
    assert HOST_PATH not in public(record).state_message
    assert not record.pending_operations
    assert isinstance(await mesh.failed(op), FailedPrecondition)
    assert (await mesh.allocated("a"), await mesh.used()) == (2, 2)
    assert "uids1" in driver.backend.shares

    # Forced: the record goes whatever the backend says, and its capacity with it; its
    # export id does not (the export may still be live, and no other share may take it).
    driver.fail_next("delete_share", FailedPrecondition(f"{HOST_PATH}/uids1 is busy"))
    forced = await mesh.delete(name, force=True)
    await mesh.syncs["a"].sync(name)
    assert await mesh.found(name) is None
    await mesh.done(forced)
    assert (await mesh.allocated("a"), await mesh.used()) == (0, 0)
    assert await mesh.released_ids("a") == []
    assert await mesh.indexed("a") == []


async def test_a_share_reset_to_active_is_made_true_again(mesh: Mesh) -> None:
    name = await mesh.active("s1", 2)
    await mesh.add_rule(name, "r1", "10.0.0.0/24", AccessRule.READ_WRITE)
    await mesh.syncs["a"].sync(name)
    driver = mesh.drivers["a"]
    driver.fail_next("delete_share", FailedPrecondition("busy"))
    await mesh.delete(name)
    await mesh.syncs["a"].sync(name)
    assert public((await mesh.share(name)).value).state == Share.ERROR
    driver.backend.crash()  # its server came back without the export
    assert driver.backend.access("uids1", CLIENT) is None

    op = await mesh.reset(name)
    assert public((await mesh.share(name)).value).state == Share.UPDATING
    await mesh.syncs["a"].sync(name)

    record = (await mesh.share(name)).value
    assert public(record).state == Share.ACTIVE and public(record).state_message == ""
    assert (await mesh.response(op, Share)).state == Share.ACTIVE
    assert driver.backend.access("uids1", CLIENT) == "READ_WRITE"
    assert (await mesh.allocated("a"), await mesh.used()) == (2, 2)


# ---- transient faults ----------------------------------------------------------------------


async def test_transient_faults_are_retried_and_never_error(mesh: Mesh) -> None:
    name, op = await mesh.create_share("s1", 2)
    await mesh.place(name, "a")
    driver = mesh.drivers["a"]
    driver.fail_next("create_share", Unavailable("the NFS server is restarting"), times=3)

    with states_seen(mesh, name) as seen:
        await mesh.syncs["a"].sync(name)
        # The delete of a share meets the same fault, and is retried too.
        delete = await mesh.delete(name)
        driver.fail_next("delete_share", Unavailable("the NFS server is restarting"), times=2)
        await mesh.syncs["a"].sync(name)

    assert (await mesh.response(op, Share)).state == Share.ACTIVE
    assert driver.count("create_share") == 4
    await mesh.done(delete)
    assert driver.count("delete_share") == 3
    assert await mesh.found(name) is None
    assert Share.ERROR not in seen and Share.CREATING in seen
    assert (await mesh.allocated("a"), await mesh.used()) == (0, 0)


async def test_a_transient_fault_past_the_deadline_fails_the_operation(mesh: Mesh) -> None:
    sync = mesh.add_backend("c", deadline=1.0)
    name, op = await mesh.create_share("s1", 2)
    await mesh.place(name, "c")
    driver = mesh.drivers["c"]
    driver.fail_next("create_share", Unavailable("the NFS server is restarting"), times=1000)

    started = time.monotonic()
    await sync.sync(name)

    assert 1.0 <= time.monotonic() - started < 10
    error = await mesh.failed(op)
    assert isinstance(error, Unavailable) and error.reason == "RETRY_DEADLINE_EXCEEDED"
    assert "the NFS server is restarting" in error.message
    record = (await mesh.share(name)).value
    assert public(record).state == Share.ERROR and not record.pending_operations
    assert public(record).state_message == error.message
    # Not handed to another pool (another pool would not heal it); its capacity is back.
    assert not record.placement.tried_pools
    assert (await mesh.allocated("c"), await mesh.used()) == (0, 0)
    assert driver.backend.shares == {}


async def test_a_sync_with_nothing_waiting_gives_up_at_the_deadline_unchanged(
    mesh: Mesh,
) -> None:
    sync = mesh.add_backend("c", deadline=0.5)
    name = await mesh.active("s1", 2, backend="c")
    before = await mesh.share(name)
    mesh.drivers["c"].fail_next("update_access", Unavailable("ganesha is down"), times=1000)

    try:
        await sync.sync(name)
    except Unavailable:
        pass
    else:
        raise AssertionError("a sync that kept failing returned as if done")

    # It is the reconciler's to try again later: the share is as it was, not in ERROR.
    after = await mesh.share(name)
    assert after.mod_revision == before.mod_revision
    assert public(after.value).state == Share.ACTIVE


# ---- races ---------------------------------------------------------------------------------


async def test_two_syncs_at_once_realize_the_share_once(mesh: Mesh) -> None:
    name, op = await mesh.create_share("s1", 2)
    await mesh.place(name, "a")
    driver = mesh.drivers["a"]
    # A second driver-host on another session and the same backend (a handover), and a
    # second worker of the first: all three wait for the share's lock.
    async with Session(mesh.store.client, TTL) as other:
        twin = FakeDriver(driver.config, driver.backend)
        gates = [driver.block("create_share"), twin.block("create_share")]

        def creates() -> int:
            return driver.count("create_share") + twin.count("create_share")

        syncs = [
            asyncio.ensure_future(s.sync(name))
            for s in (mesh.syncs["a"], mesh.syncs["a"], mesh.sync_for("a", twin, other))
        ]
        await _until(lambda: creates() == 1)
        await asyncio.sleep(0.3)  # the others would have called the backend by now
        assert creates() == 1
        for gate in gates:
            gate.set()
        await asyncio.gather(*syncs)

    assert creates() == 1
    assert list(driver.backend.shares) == ["uids1"]
    record = (await mesh.share(name)).value
    assert public(record).state == Share.ACTIVE and not record.pending_operations
    assert (await mesh.response(op, Share)).state == Share.ACTIVE
    assert (await mesh.allocated("a"), await mesh.used()) == (2, 2)


async def test_a_rule_added_while_the_share_is_made_is_applied(mesh: Mesh) -> None:
    name, create = await mesh.create_share("s1", 2)
    await mesh.place(name, "a")
    driver = mesh.drivers["a"]
    gate = driver.block("create_share")
    sync = asyncio.ensure_future(mesh.syncs["a"].sync(name))
    await _until(lambda: driver.count("create_share") == 1)
    rule = await mesh.add_rule(name, "r1", "10.0.0.0/24", AccessRule.READ_WRITE)
    gate.set()
    await sync

    assert (await mesh.response(create, Share)).state == Share.ACTIVE
    assert (await mesh.response(rule, AccessRule)).state == AccessRule.ACTIVE
    assert driver.backend.access("uids1", CLIENT) == "READ_WRITE"
    assert list(driver.backend.shares) == ["uids1"]
    record = (await mesh.share(name)).value
    assert public(record).state == Share.ACTIVE and not record.pending_operations


async def test_a_delete_while_the_share_is_made_wins(mesh: Mesh) -> None:
    name, create = await mesh.create_share("s1", 2)
    await mesh.place(name, "a")
    driver = mesh.drivers["a"]
    gate = driver.block("create_share")
    sync = asyncio.ensure_future(mesh.syncs["a"].sync(name))
    await _until(lambda: driver.count("create_share") == 1)
    delete = await mesh.delete(name)
    gate.set()
    await sync

    assert await mesh.found(name) is None
    await mesh.done(delete)
    assert (await mesh.failed(create)).reason == "RESOURCE_DELETED"
    assert driver.backend.shares == {}
    assert (await mesh.allocated("a"), await mesh.used()) == (0, 0)
    assert await mesh.released_ids("a") == [1]


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


# ---- snapshots ----------------------------------------------------------------------------


async def test_a_snapshot_is_taken_exported_and_deleted(mesh: Mesh) -> None:
    name = await mesh.active("s1", 3)
    await mesh.add_rule(name, "r1", "10.0.0.0/24", AccessRule.READ_WRITE)
    await mesh.syncs["a"].sync(name)
    driver = mesh.drivers["a"]
    driver.backend.write("uids1", "a.txt", 10, CLIENT)
    snapshot, take = await mesh.take_snapshot(name, "x")
    await mesh.syncs["a"].sync(name)

    taken = await mesh.response(take, snapshot_pb2.Snapshot)  # type: ignore[type-var]
    assert taken.state == snapshot_pb2.Snapshot.READY and taken.size_gib == 3
    assert [e.path for e in taken.export_locations] == ["127.0.0.1:/snapshots/snapx"]
    assert driver.backend.snapshots["snapx"].files == {"a.txt": 10}
    assert driver.backend.snapshot_access("snapx", CLIENT) == "READ_ONLY"
    record = (await mesh.snapshot(snapshot)).value  # type: ignore[union-attr]
    assert record.export_id and not record.pending_operations
    assert await mesh.snapshot_usage() == (1, 3)

    # A rule change reaches the snapshot's export too.
    await mesh.add_rule(name, "r2", "10.9.0.0/24", AccessRule.READ_WRITE)
    await mesh.syncs["a"].sync(name)
    assert driver.backend.snapshot_access("snapx", "10.9.0.1") == "READ_ONLY"

    delete = await mesh.delete_snapshot(snapshot)
    await mesh.syncs["a"].sync(name)
    await mesh.done(delete)
    assert await mesh.snapshot(snapshot) is None
    assert "snapx" not in driver.backend.snapshots
    assert await mesh.snapshot_usage() == (0, 0)
    assert record.export_id in await mesh.released_ids("a")


async def test_a_snapshot_the_backend_refuses_is_error_and_keeps_its_quota(mesh: Mesh) -> None:
    name = await mesh.active("s1", 2)
    driver = mesh.drivers["a"]
    driver.fail_next("create_snapshot", FailedPrecondition(f"{HOST_PATH}/x: read-only pool"))
    snapshot, take = await mesh.take_snapshot(name, "x")
    await mesh.syncs["a"].sync(name)

    error = await mesh.failed(take)
    assert HOST_PATH not in error.message
    record = (await mesh.snapshot(snapshot)).value  # type: ignore[union-attr]
    assert record.snapshot.state == snapshot_pb2.Snapshot.ERROR
    assert HOST_PATH not in record.snapshot.state_message
    assert record.export_id == 0, "its export id went back"
    assert await mesh.snapshot_usage() == (1, 2)
    # The share is untouched, and the failed snapshot can be deleted.
    assert public((await mesh.share(name)).value).state == Share.ACTIVE
    await mesh.delete_snapshot(snapshot)
    await mesh.syncs["a"].sync(name)
    assert await mesh.snapshot(snapshot) is None and await mesh.snapshot_usage() == (0, 0)


async def test_racing_snapshot_deletes_each_delete_once_and_give_all_back(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    # One snapshot on each of N shares of the project, each share synced by its own
    # driver-host process (its own Store: no turns shared), all giving back to the one
    # usage record at once, so their counter writes race.
    n = 8
    driver = mesh.drivers["a"]
    snapshots, deletes = [], []
    for i in range(n):
        name = await mesh.active(f"s{i}", 1)
        snapshot, _ = await mesh.take_snapshot(name, f"x{i}")
        await mesh.syncs["a"].sync(name)
        snapshots.append(snapshot)
        deletes.append(await mesh.delete_snapshot(snapshot))
    assert await mesh.snapshot_usage() == (n, n)
    syncs = [
        ShareSync(
            Store(mesh.store.client, mesh.store.root),
            mesh.session,
            driver,
            "backends/a",
            mesh.peers,
            MAX_ATTEMPTS,
            "host-1",
            DEADLINE,
        )
        for _ in range(n)
    ]
    gate = driver.block("delete_snapshot")  # all at the backend before any counts
    caplog.set_level(logging.DEBUG, logger=ledger.__name__)
    try:
        running = [
            asyncio.ensure_future(sync.sync(snapshot.split("/snapshots/")[0]))
            for sync, snapshot in zip(syncs, snapshots)
        ]
        await _until(lambda: driver.count("delete_snapshot") == n)
        gate.set()
        await asyncio.gather(*running)
    finally:
        for sync in syncs:
            sync.stop()

    for snapshot, delete in zip(snapshots, deletes):
        await mesh.done(delete)
        assert await mesh.snapshot(snapshot) is None
    assert await mesh.snapshot_usage() == (0, 0)
    assert driver.backend.snapshots == {}
    # A lost race counted again; the backend's delete never ran again.
    raced = [r for r in caplog.records if "counting again" in r.getMessage()]
    assert raced, "the deletes never raced: the test proves nothing"
    assert driver.count("delete_snapshot") == n


async def test_transient_snapshot_faults_are_retried(mesh: Mesh) -> None:
    name = await mesh.active("s1", 2)
    driver = mesh.drivers["a"]
    driver.fail_next("create_snapshot", Unavailable("the NFS server is restarting"), times=2)
    snapshot, take = await mesh.take_snapshot(name, "x")
    await mesh.syncs["a"].sync(name)
    await mesh.done(take)
    assert driver.count("create_snapshot") == 3


async def test_a_revert_puts_the_snapshots_data_back(mesh: Mesh) -> None:
    name = await mesh.active("s1", 2)
    await mesh.add_rule(name, "r1", "10.0.0.0/24", AccessRule.READ_WRITE)
    await mesh.syncs["a"].sync(name)
    driver = mesh.drivers["a"]
    driver.backend.write("uids1", "a.txt", 10, CLIENT)
    snapshot, _ = await mesh.take_snapshot(name, "x")
    await mesh.syncs["a"].sync(name)
    driver.backend.write("uids1", "b.txt", 20, CLIENT)

    revert = await mesh.revert(name, snapshot)
    with states_seen(mesh, name) as seen:
        await mesh.syncs["a"].sync(name)
    reverted = await mesh.response(revert, Share)
    assert reverted.state == Share.ACTIVE
    assert driver.backend.shares["uids1"].files == {"a.txt": 10}
    assert driver.backend.access("uids1", CLIENT) == "READ_WRITE", "the rules stay"
    record = (await mesh.share(name)).value
    assert lifecycle.share.pending_revert(record) == "" and not record.pending_operations
    assert Share.ERROR not in seen


async def test_a_revert_to_a_snapshot_gone_from_the_backend_is_error(mesh: Mesh) -> None:
    name = await mesh.active("s1", 2)
    snapshot, _ = await mesh.take_snapshot(name, "x")
    await mesh.syncs["a"].sync(name)
    mesh.drivers["a"].backend.snapshots.clear()  # lost behind the mesh's back
    revert = await mesh.revert(name, snapshot)
    await mesh.syncs["a"].sync(name)
    assert isinstance(await mesh.failed(revert), NotFound)
    record = (await mesh.share(name)).value
    assert public(record).state == Share.ERROR and lifecycle.share.pending_revert(record) == ""


async def test_a_share_is_made_from_a_snapshot(mesh: Mesh) -> None:
    source = await mesh.active("s1", 2)
    driver = mesh.drivers["a"]
    await mesh.add_rule(source, "r1", "10.0.0.0/24", AccessRule.READ_WRITE)
    await mesh.syncs["a"].sync(source)
    driver.backend.write("uids1", "a.txt", 10, CLIENT)
    snapshot, _ = await mesh.take_snapshot(source, "x")
    await mesh.syncs["a"].sync(source)

    name, create = await mesh.create_share("s2", 3)
    found = await mesh.share(name)
    found.value.spec.share.source_snapshot = snapshot
    source = await mesh.snapshot(snapshot)
    assert source is not None
    source.value.clones.append(name)  # as the api's CreateShare holds the snapshot
    txn = mesh.store.txn().put(found.key, found.value, found.mod_revision)
    await txn.put(source.key, source.value, source.mod_revision).commit()
    await mesh.place(name, "a")
    await mesh.syncs["a"].sync(name)

    made = await mesh.response(create, Share)
    assert made.state == Share.ACTIVE and made.size_gib == 3
    assert driver.backend.shares["uids2"].files == {"a.txt": 10}
    assert driver.count("create_share") == 1, "only the source was made blank"
    held = (await mesh.snapshot(snapshot)).value  # type: ignore[union-attr]
    assert list(held.clones) == [], "a share made no longer holds its snapshot"


async def test_a_forced_delete_takes_the_snapshots_with_the_share(mesh: Mesh) -> None:
    name = await mesh.active("s1", 2)
    snapshots = []
    for n in range(2):
        snapshot, _ = await mesh.take_snapshot(name, f"x{n}")
        snapshots.append(snapshot)
    await mesh.syncs["a"].sync(name)
    for snapshot in snapshots:  # as the api's forced delete marks them
        found = await mesh.snapshot(snapshot)
        assert found is not None
        lifecycle.snapshot.delete_requested(found.value)
        await mesh.store.txn().put(found.key, found.value, found.mod_revision).commit()
    delete = await mesh.delete(name, force=True)
    await mesh.syncs["a"].sync(name)

    await mesh.done(delete)
    assert await mesh.found(name) is None
    assert all([await mesh.snapshot(s) is None for s in snapshots])
    assert mesh.drivers["a"].backend.snapshots == {}
    assert await mesh.snapshot_usage() == (0, 0)
    assert (await mesh.allocated("a"), await mesh.used()) == (0, 0)


# ---- shrink ---------------------------------------------------------------------------------


async def test_a_shrink_is_realized_at_the_smaller_size(mesh: Mesh) -> None:
    name = await mesh.active("s1", 3)
    resize = await mesh.resize(name, 1)
    await mesh.syncs["a"].sync(name)
    shrunk = await mesh.response(resize, Share)
    assert (shrunk.state, shrunk.size_gib) == (Share.ACTIVE, 1)
    assert mesh.drivers["a"].backend.shares["uids1"].size_bytes == 1 << 30
    record = (await mesh.share(name)).value
    assert record.status.realized_size_gib == record.allocated_gib == 1
    assert (await mesh.allocated("a"), await mesh.used()) == (1, 1)


async def test_a_shrink_that_would_lose_data_leaves_the_share_as_it_was(mesh: Mesh) -> None:
    name = await mesh.active("s1", 3)
    await mesh.add_rule(name, "r1", "10.0.0.0/24", AccessRule.READ_WRITE)
    await mesh.syncs["a"].sync(name)
    mesh.drivers["a"].backend.write("uids1", "big", (3 << 30) // 2, CLIENT)
    resize = await mesh.resize(name, 1)
    await mesh.syncs["a"].sync(name)

    assert (await mesh.failed(resize)).reason == "SHRINK_WOULD_LOSE_DATA"
    record = (await mesh.share(name)).value
    assert (public(record).state, public(record).size_gib) == (Share.ACTIVE, 3)
    assert "resize to 1 GiB failed" in public(record).state_message
    assert record.status.realized_size_gib == record.allocated_gib == 3
    assert (await mesh.allocated("a"), await mesh.used()) == (3, 3), "taken again"
    assert mesh.drivers["a"].backend.shares["uids1"].size_bytes == 3 << 30


async def test_a_revoked_client_loses_the_snapshots_before_the_revocation_is_done(
    mesh: Mesh,
) -> None:
    name = await mesh.active("s1", 2)
    await mesh.add_rule(name, "r1", "10.0.0.0/24", AccessRule.READ_WRITE)
    await mesh.syncs["a"].sync(name)
    await mesh.take_snapshot(name, "x")
    await mesh.syncs["a"].sync(name)
    driver = mesh.drivers["a"]
    assert driver.backend.snapshot_access("snapx", CLIENT) == "READ_ONLY"

    # The snapshot's export fails once for a moment: the revocation waits for it.
    driver.fail_next("export_snapshot", Unavailable("the NFS server is restarting"))
    revoke = await mesh.delete_rule(f"{name}/accessRules/r1")
    await mesh.syncs["a"].sync(name)
    await mesh.done(revoke)
    assert driver.backend.snapshot_access("snapx", CLIENT) is None
    assert driver.count("export_snapshot") >= 3  # taken, failed, then applied


async def test_a_revert_is_recorded_once_done_and_never_repeated(mesh: Mesh) -> None:
    name = await mesh.active("s1", 2)
    await mesh.add_rule(name, "r1", "10.0.0.0/24", AccessRule.READ_WRITE)
    await mesh.syncs["a"].sync(name)
    snapshot, _ = await mesh.take_snapshot(name, "x")
    await mesh.syncs["a"].sync(name)
    driver = mesh.drivers["a"]
    # The export after the revert fails for a moment: the sync retries, and the data
    # written in between stays (a second revert would wipe it).
    driver.fail_next("update_access", Unavailable("the NFS server is restarting"))
    revert = await mesh.revert(name, snapshot)
    await mesh.syncs["a"].sync(name)
    await mesh.done(revert)
    assert driver.count("revert_to_snapshot") == 1


async def test_snapshots_of_a_share_in_error_still_go_and_none_is_taken(mesh: Mesh) -> None:
    name = await mesh.active("s1", 2)
    kept, _ = await mesh.take_snapshot(name, "kept")
    await mesh.syncs["a"].sync(name)
    waiting, take = await mesh.take_snapshot(name, "late")
    found = await mesh.share(name)
    lifecycle.share.failed(found.value, "the backend lost it")
    await mesh.store.txn().put(found.key, found.value, found.mod_revision).commit()
    delete = await mesh.delete_snapshot(kept)
    await mesh.syncs["a"].sync(name)

    await mesh.done(delete)
    assert await mesh.snapshot(kept) is None
    assert (await mesh.failed(take)).reason == "SHARE_NOT_USABLE"
    late = (await mesh.snapshot(waiting)).value  # type: ignore[union-attr]
    assert late.snapshot.state == snapshot_pb2.Snapshot.ERROR
    assert await mesh.snapshot_usage() == (1, 2), "the failed one holds its quota"
