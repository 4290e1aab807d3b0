"""The fake driver: a backend held in memory, for fast tests of the share lifecycle.

It keeps the contract as a real driver does (idempotent calls, the full rule set, hard
size limits, capacity, capabilities) and needs no Ganesha, no loop devices and no root.
Its storage and NFS server are a model, `FakeBackend`, which outlives driver instances
as a real backend's servers outlive a driver host, and which tests use as a client would
(`mount`, `write`, `read`). Faults are injected per method with `FakeDriver.fail_next`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from sharemesh.ganesha import ClientRule, share_pseudo, snapshot_pseudo
from sharemesh.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

from ._loopfs import GIB
from .base import (
    AccessLevel,
    AccessRuleSpec,
    BackendStats,
    Capabilities,
    ExportLocation,
    GatewayAccess,
    PoolStats,
    ShareSpec,
    SnapshotSpec,
    check_share,
    client_blocks,
    report_progress,
    unsupported,
)

log = logging.getLogger("sharemesh.driver_host.fake")

# The contract's methods, the ones `fail_next` and `block` accept.
METHODS = frozenset(
    {
        "start",
        "stats",
        "create_share",
        "delete_share",
        "resize_share",
        "update_access",
        "ensure_share",
        "create_snapshot",
        "delete_snapshot",
        "create_share_from_snapshot",
        "revert_to_snapshot",
        "export_snapshot",
    }
)


@dataclass(frozen=True, kw_only=True)
class FakeDriverConfig:
    pool_name: str = "default"
    capacity_gib: int = 100
    max_over_subscription_ratio: float = 1.0
    """The pool may provision up to this many times `capacity_gib` (thin)."""
    reserved_percentage: float = 0.0
    host: str = "127.0.0.1"
    """The address in export locations (nothing listens there)."""
    nfs_port: int = 2049
    mount_port: int = 20048
    availability_zone: str = ""
    shrink_support: bool = False
    """Shrink, refusing when the data would not fit (as quota-based backends do)."""
    snapshot_support: bool = False
    """Snapshots, shares made from them, reverts and mountable snapshots: all, or none."""
    driver_handles_share_servers: bool = False
    capabilities: Mapping[str, str] = field(default_factory=dict)
    """The operator's custom capabilities, as for the local driver."""


@dataclass
class FakeShare:
    size_bytes: int
    files: dict[str, int] = field(default_factory=dict)
    """Name -> bytes stored."""
    exported: bool = True
    """The NFS server has the export; `clients` decide who may mount it."""
    clients: tuple[ClientRule, ...] = ()

    def used_bytes(self) -> int:
        return sum(self.files.values())


@dataclass
class FakeSnapshot:
    share_id: str
    size_bytes: int
    files: dict[str, int]
    clients: tuple[ClientRule, ...] = ()
    """Who may mount its read-only export (`export_snapshot`); nobody when empty."""


class FakeBackend:
    """The storage and the NFS server behind a fake driver, as a client sees them."""

    def __init__(self) -> None:
        self.shares: dict[str, FakeShare] = {}
        self.snapshots: dict[str, FakeSnapshot] = {}
        self.serving = True
        self._listeners: set[asyncio.Queue[list[str]]] = set()

    # ---- what a client sees ------------------------------------------------------------

    def access(self, share_id: str, client: str) -> AccessLevel | None:
        """The level `client` gets: Ganesha's, the first CLIENT block that matches."""
        share = self.shares.get(share_id)
        if share is None or not share.exported:
            return None
        address = ipaddress.ip_address(client)
        for rule in share.clients:
            if any(address in ipaddress.ip_network(c) for c in rule.clients):
                return "READ_WRITE" if rule.access == "RW" else "READ_ONLY"
        return None

    def snapshot_access(self, snapshot_id: str, client: str) -> AccessLevel | None:
        """The level `client` gets at a snapshot's own export: read-only, or none."""
        snapshot = self.snapshots.get(snapshot_id)
        if snapshot is None or not self.serving:
            return None
        address = ipaddress.ip_address(client)
        for rule in snapshot.clients:
            if any(address in ipaddress.ip_network(c) for c in rule.clients):
                return "READ_ONLY"
        return None

    def mount(self, share_id: str, client: str) -> AccessLevel:
        """Mounts the share as `client`, or raises what the client would get."""
        if not self.serving:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "no NFS server")
        level = self.access(share_id, client)
        if level is None:
            raise PermissionError(errno.EACCES, f"{client} may not mount {share_id}")
        return level

    def write(self, share_id: str, name: str, size_bytes: int, client: str) -> None:
        """Writes a file of `size_bytes`; a full share stores what fits and raises ENOSPC."""
        if self.mount(share_id, client) != "READ_WRITE":
            raise OSError(errno.EROFS, f"{share_id} is read-only for {client}")
        share = self.shares[share_id]
        share.files.pop(name, None)
        free = share.size_bytes - share.used_bytes()
        share.files[name] = min(size_bytes, free)
        if size_bytes > free:
            raise OSError(errno.ENOSPC, f"{share_id} is full")

    def read(self, share_id: str, name: str, client: str) -> int:
        """The size of a file, read as `client`."""
        self.mount(share_id, client)
        try:
            return self.shares[share_id].files[name]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, name) from None

    def fill(self, share_id: str, leave_bytes: int) -> None:
        """Fills the share from the server's side, leaving `leave_bytes` free."""
        share = self.shares[share_id]
        share.files["filler"] = share.size_bytes - share.used_bytes() - leave_bytes

    # ---- what happens to the server ----------------------------------------------------

    def crash(self) -> None:
        """The server came back without its exports (a host reboot): only `ensure_share`
        serves the shares again."""
        for share in self.shares.values():
            share.exported, share.clients = False, ()
        for snapshot in self.snapshots.values():
            snapshot.clients = ()

    def restart_server(self, refused: Sequence[str] = ()) -> None:
        """The server died and was restarted with its exports, except the `refused`
        shares'; supervising drivers tell their `on_restart`."""
        for share_id in refused:
            if share_id in self.shares:
                self.shares[share_id].exported = False
        for queue in self._listeners:
            queue.put_nowait(list(refused))

    @contextlib.contextmanager
    def restarts(self) -> Iterator[asyncio.Queue[list[str]]]:
        """The refused shares of each `restart_server` from now on, while inside."""
        queue: asyncio.Queue[list[str]] = asyncio.Queue()
        self._listeners.add(queue)
        try:
            yield queue
        finally:
            self._listeners.discard(queue)


class FakeDriver:
    """Implements `Driver` in memory, on a `FakeBackend` (a new one unless given)."""

    def __init__(self, config: FakeDriverConfig, backend: FakeBackend | None = None) -> None:
        if config.max_over_subscription_ratio < 1:
            raise InvalidArgument(
                "options.max_over_subscription_ratio", "must be at least 1 (1 means thick)"
            )
        if not 0 <= config.reserved_percentage < 100:
            raise InvalidArgument("options.reserved_percentage", "must be from 0 to under 100")
        self.config = config
        self.backend = backend if backend is not None else FakeBackend()
        self.calls: list[tuple[str, str]] = []
        """(method, share or snapshot id) of every contract call, in order."""
        self._faults: dict[str, list[BaseException]] = {}
        self._gates: dict[str, asyncio.Event] = {}
        self._stopping = asyncio.Event()

    # ---- test hooks --------------------------------------------------------------------

    def fail_next(self, method: str, error: BaseException, times: int = 1) -> None:
        """The next `times` calls of `method` raise `error` (e.g. `Unavailable`) and do
        nothing else."""
        self._known(method)
        self._faults.setdefault(method, []).extend([error] * times)

    def block(self, method: str) -> asyncio.Event:
        """Calls of `method` wait, before doing anything, until the event is set."""
        self._known(method)
        return self._gates.setdefault(method, asyncio.Event())

    def count(self, method: str) -> int:
        return sum(1 for called, _ in self.calls if called == method)

    @staticmethod
    def _known(method: str) -> None:
        if method not in METHODS:
            raise ValueError(f"{method!r} is not a contract method: {sorted(METHODS)}")

    async def _enter(self, method: str, subject: str = "") -> None:
        self.calls.append((method, subject))
        gate = self._gates.get(method)
        if gate is not None:
            await gate.wait()
        if faults := self._faults.get(method):
            raise faults.pop(0)

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self._enter("start")
        self._stopping.clear()
        self.backend.serving = True

    async def stop(self, stop_servers: bool) -> None:
        self._stopping.set()
        if stop_servers:
            self.backend.serving = False

    async def supervise(
        self, on_restart: Callable[[Sequence[str]], Awaitable[None]] | None = None
    ) -> None:
        stopping = asyncio.create_task(self._stopping.wait())
        restarted: asyncio.Task[list[str]] | None = None
        try:
            with self.backend.restarts() as restarts:
                while not self._stopping.is_set():
                    restarted = asyncio.create_task(restarts.get())
                    await asyncio.wait({stopping, restarted}, return_when=asyncio.FIRST_COMPLETED)
                    if restarted.done() and on_restart is not None:
                        await on_restart(restarted.result())
        finally:
            for task in (stopping, restarted):
                if task is not None:
                    task.cancel()

    # ---- stats ---------------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        c = self.config
        return Capabilities(
            snapshot_support=c.snapshot_support,
            create_share_from_snapshot_support=c.snapshot_support,
            revert_to_snapshot_support=c.snapshot_support,
            mount_snapshot_support=c.snapshot_support,
            shrink_support=c.shrink_support,
            thin_provisioning=True,
            driver_handles_share_servers=c.driver_handles_share_servers,
            max_over_subscription_ratio=c.max_over_subscription_ratio,
            reserved_percentage=c.reserved_percentage,
            availability_zone=c.availability_zone,
            custom=c.capabilities,
        )

    def _provisioned_bytes(self) -> int:
        return sum(share.size_bytes for share in self.backend.shares.values())

    def _limit_bytes(self) -> int:
        return int(self.config.capacity_gib * self.config.max_over_subscription_ratio * GIB)

    async def stats(self) -> BackendStats:
        await self._enter("stats")
        total = float(self.config.capacity_gib)
        provisioned = self._provisioned_bytes() / GIB
        pool = PoolStats(
            name=self.config.pool_name,
            total_gib=total,
            free_gib=max(0.0, total - provisioned),
            provisioned_gib=provisioned,
            offers=self.capabilities(),
        )
        return BackendStats(pools=(pool,))

    # ---- shares --------------------------------------------------------------------------

    def _locations(self, share: ShareSpec) -> list[ExportLocation]:
        return [
            ExportLocation(
                path=f"{self.config.host}:{share_pseudo(share.share_id)}",
                nfs_port=self.config.nfs_port,
                mount_port=self.config.mount_port,
            )
        ]

    def _serving(self) -> None:
        if not self.backend.serving:
            raise Unavailable("the fake NFS server is stopped")

    def _held(self, share: ShareSpec) -> FakeShare:
        held = self.backend.shares.get(share.share_id)
        if held is None:
            raise NotFound(f"share {share.name} does not exist on this backend")
        return held

    def _reserve(self, share: ShareSpec, more_bytes: int) -> None:
        if self._provisioned_bytes() + more_bytes > self._limit_bytes():
            raise ResourceExhausted(
                f"pool {self.config.pool_name} may provision "
                f"{self._limit_bytes() / GIB:.0f} GiB, "
                f"{self._provisioned_bytes() / GIB:.0f} GiB provisioned; "
                f"{share.name} needs {more_bytes / GIB:.0f} GiB more"
            )

    def gateway_access(self, share: ShareSpec) -> GatewayAccess:
        return GatewayAccess(
            fsal="PROXY_V4",
            path=share_pseudo(share.share_id),
            server=self.config.host,
            nfs_port=self.config.nfs_port,
        )

    async def create_share(self, share: ShareSpec) -> list[ExportLocation]:
        check_share(share, self.config.pool_name)
        await self._enter("create_share", share.share_id)
        self._serving()
        held = self.backend.shares.get(share.share_id)
        if held is None:
            self._reserve(share, share.size_gib * GIB)
            self.backend.shares[share.share_id] = FakeShare(share.size_gib * GIB)
        elif not held.exported:
            held.exported = True  # a repeat keeps the rules given since, as `local` does
        return self._locations(share)

    async def delete_share(self, share: ShareSpec) -> None:
        await self._enter("delete_share", share.share_id)
        self._serving()
        self.backend.shares.pop(share.share_id, None)

    async def resize_share(self, share: ShareSpec, new_size_gib: int) -> None:
        check_share(share, self.config.pool_name)
        await self._enter("resize_share", share.share_id)
        held = self._held(share)
        new = new_size_gib * GIB
        if new < held.size_bytes:
            action = (
                f"cannot shrink share {share.name} from {held.size_bytes // GIB} to "
                f"{new_size_gib} GiB"
            )
            if not self.config.shrink_support:
                raise unsupported("shrink_support", action)
            if held.used_bytes() > new:
                raise FailedPrecondition(
                    f"{action}: {held.used_bytes()} bytes are stored",
                    reason="SHRINK_WOULD_LOSE_DATA",
                )
        elif new > held.size_bytes:
            self._reserve(share, new - held.size_bytes)
        held.size_bytes = new

    async def update_access(self, share: ShareSpec, rules: Sequence[AccessRuleSpec]) -> None:
        await self._export("update_access", share, rules)

    async def ensure_share(
        self, share: ShareSpec, rules: Sequence[AccessRuleSpec]
    ) -> list[ExportLocation]:
        await self._export("ensure_share", share, rules)
        return self._locations(share)

    async def _export(self, method: str, share: ShareSpec, rules: Sequence[AccessRuleSpec]) -> None:
        """Both calls do the same here, as for `local`; each is hooked by its own name."""
        check_share(share, self.config.pool_name)
        clients = client_blocks(rules)  # validates the rules before touching anything
        await self._enter(method, share.share_id)
        self._serving()
        held = self._held(share)
        held.exported, held.clients = True, clients

    # ---- snapshots -----------------------------------------------------------------------

    def _snapshots(self, capability: str, action: str) -> None:
        if not self.config.snapshot_support:
            raise unsupported(capability, action)

    async def create_snapshot(self, share: ShareSpec, snapshot: SnapshotSpec) -> None:
        self._snapshots("snapshot_support", f"cannot snapshot share {share.name}")
        await self._enter("create_snapshot", snapshot.snapshot_id)
        held = self._held(share)
        if snapshot.snapshot_id not in self.backend.snapshots:
            self.backend.snapshots[snapshot.snapshot_id] = FakeSnapshot(
                share.share_id, held.size_bytes, dict(held.files)
            )

    async def delete_snapshot(self, share: ShareSpec, snapshot: SnapshotSpec) -> None:
        self._snapshots("snapshot_support", f"cannot delete snapshot {snapshot.name}")
        await self._enter("delete_snapshot", snapshot.snapshot_id)
        self.backend.snapshots.pop(snapshot.snapshot_id, None)

    def _snapshot(self, snapshot: SnapshotSpec) -> FakeSnapshot:
        held = self.backend.snapshots.get(snapshot.snapshot_id)
        if held is None:
            raise NotFound(f"snapshot {snapshot.name} does not exist on this backend")
        return held

    async def create_share_from_snapshot(
        self, share: ShareSpec, snapshot: SnapshotSpec
    ) -> list[ExportLocation]:
        self._snapshots(
            "create_share_from_snapshot_support",
            f"cannot create share {share.name} from a snapshot",
        )
        check_share(share, self.config.pool_name)
        await self._enter("create_share_from_snapshot", share.share_id)
        self._serving()
        await report_progress(50, "copying the snapshot")
        source = self._snapshot(snapshot)
        if share.size_gib * GIB < source.size_bytes:
            raise InvalidArgument("size_gib", "must be at least the snapshot's share's size")
        if share.share_id not in self.backend.shares:
            self._reserve(share, share.size_gib * GIB)
            self.backend.shares[share.share_id] = FakeShare(
                share.size_gib * GIB, dict(source.files)
            )
        return self._locations(share)

    async def revert_to_snapshot(self, share: ShareSpec, snapshot: SnapshotSpec) -> None:
        self._snapshots("revert_to_snapshot_support", f"cannot revert share {share.name}")
        await self._enter("revert_to_snapshot", share.share_id)
        held, source = self._held(share), self._snapshot(snapshot)
        if source.share_id != share.share_id:
            raise InvalidArgument("snapshot", f"is not a snapshot of share {share.name}")
        held.files = dict(source.files)

    async def export_snapshot(
        self, share: ShareSpec, snapshot: SnapshotSpec, rules: Sequence[AccessRuleSpec]
    ) -> list[ExportLocation]:
        self._snapshots("mount_snapshot_support", f"cannot export snapshot {snapshot.name}")
        clients = client_blocks(rules)
        await self._enter("export_snapshot", snapshot.snapshot_id)
        self._serving()
        self._snapshot(snapshot).clients = clients
        return [
            ExportLocation(
                path=f"{self.config.host}:{snapshot_pseudo(snapshot.snapshot_id)}",
                nfs_port=self.config.nfs_port,
                mount_port=self.config.mount_port,
            )
        ]
