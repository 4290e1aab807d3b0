"""The glusterfs driver: each share a directory of a Gluster volume with a directory
quota as its hard size, served by one Ganesha through FSAL_GLUSTER (libgfapi).

Directories are made and removed over libgfapi (`_gfapi`, no FUSE mount); quotas and the
volume's state through glusterd's CLI (`_gluster_cli`). A quota shrinks, so shares do,
unless the data stored would not fit. Snapshots need thin-LVM bricks: not offered.

Ending a libgfapi client takes ~10 s (`glfs_fini`). So the driver's own client lives as
long as its process, and Ganesha keeps an anchor export of the volume (nobody may mount
it) so that removing a share's export never ends Ganesha's client of the volume; only a
stop of Ganesha does, and that is not waited for.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sharemesh.ganesha import (
    ClientRule,
    Export,
    GaneshaInstance,
    GlusterFsal,
    RefusedExport,
    share_of_pseudo,
    share_pseudo,
)
from sharemesh.runtime import export_ids
from sharemesh.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)

from ._gfapi import Volume
from ._gluster_cli import GlusterCli
from .base import (
    AccessRuleSpec,
    BackendStats,
    Capabilities,
    ExportLocation,
    GatewayAccess,
    PoolStats,
    ShareSpec,
    SnapshotSpec,
    check_gateway_fsal,
    check_share,
    client_blocks,
    gateways_reach,
    unsupported,
)

log = logging.getLogger("sharemesh.driver_host.glusterfs")

GIB = 1 << 30
SHARES_DIR = "/shares"
"""Where the shares' directories live in the volume; quotas elsewhere are not ours."""
_FREE_STEP = 64 << 20
ANCHOR_EXPORT_ID = export_ids.RESERVED_EXPORT_ID
"""The anchor export's id: the last of Ganesha's, which the mesh hands out last."""


@dataclass(frozen=True, kw_only=True)
class GlusterDriverConfig:
    server: str = "127.0.0.1"
    """glusterd's address (the volfile server)."""
    volume: str
    """A started volume with quota enabled (`scripts/dev-gluster up DIR` makes one)."""
    pool_name: str = "default"
    max_over_subscription_ratio: float = 1.0
    """Quotas are thin: the volume may promise up to this many times its size."""
    reserved_percentage: float = 0.0
    host: str = "127.0.0.1"
    """The address clients use, in export locations."""
    nfs_port: int
    mount_port: int
    state_dir: Path
    """The Ganesha instance's state, and the libgfapi client's log."""
    grace_seconds: int = 0
    bind_address: str | None = None
    availability_zone: str = ""
    capabilities: Mapping[str, str] = field(default_factory=dict)
    """Custom capabilities of the pool (e.g. `tier = "gold"`)."""
    gateway_fsal: str = "NATIVE"
    """How gateways reach shares on share networks: `NATIVE` (FSAL_GLUSTER to the volume,
    when `server` is an address off the loopback, which their namespaces can reach) or
    `PROXY_V4` (this backend's NFS export)."""


# One libgfapi client per volume and process: a restarted driver takes it over, since
# ending it costs ~10 s. The process's exit releases it.
_clients: dict[tuple[str, str], Volume] = {}
_clients_lock = threading.Lock()


def _client(server: str, volume: str, log_file: Path) -> Volume:
    with _clients_lock:
        key = (server, volume)
        if key not in _clients:
            _clients[key] = Volume(server, volume, log_file)
        return _clients[key]


class GlusterDriver:
    """Implements `Driver` on directories of one Gluster volume."""

    def __init__(self, config: GlusterDriverConfig) -> None:
        self.config = config
        if config.max_over_subscription_ratio < 1:
            raise InvalidArgument(
                "options.max_over_subscription_ratio", "must be at least 1 (1 means thick)"
            )
        if not 0 <= config.reserved_percentage < 100:
            raise InvalidArgument("options.reserved_percentage", "must be from 0 to under 100")
        # Checked now, so a bad name fails the config, not the first export.
        self._fsal("/").render()
        check_gateway_fsal(config.gateway_fsal)
        self._native_gateways = config.gateway_fsal == "NATIVE" and gateways_reach((config.server,))
        if config.gateway_fsal == "NATIVE" and not self._native_gateways:
            log.warning(
                "gateways proxy volume %s: its server %s is no address off the loopback "
                "that their namespaces can reach",
                config.volume,
                config.server,
            )
        self.cli = GlusterCli(config.volume)
        self.ganesha = GaneshaInstance(
            Path(config.state_dir) / "ganesha",
            config.nfs_port,
            config.mount_port,
            grace_seconds=config.grace_seconds,
            bind_address=config.bind_address,
            # Its orderly exit ends its volume client (~10 s) and only then exits.
            stop_timeout=1.0,
        )
        self._volume: Volume | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._capacity = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._refused_at_start: list[RefusedExport] = []

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping.clear()
        info = await self.cli.info()
        if not info.started:
            raise FailedPrecondition(f"Gluster volume {self.config.volume} is not started")
        if info.options.get("features.quota") != "on":
            raise FailedPrecondition(
                f"Gluster volume {self.config.volume} has no quota enabled; shares' sizes "
                "could not be enforced (`gluster volume quota VOLUME enable`)"
            )
        # Either lets a client's writes past a share's size seem to succeed: the quota
        # timeouts for about a minute, write-behind always (the brick's late EDQUOT never
        # reaches an NFSv3 client).
        for option, exact in (
            ("features.soft-timeout", "0"),
            ("features.hard-timeout", "0"),
            ("performance.write-behind", "off"),
        ):
            if info.options.get(option) != exact:
                log.warning(
                    "volume %s: %s is not %s; writes may overshoot a share's size",
                    self.config.volume,
                    option,
                    exact,
                )
        log_file = Path(self.config.state_dir) / "gfapi.log"
        self._volume = await asyncio.to_thread(
            _client, self.config.server, self.config.volume, log_file
        )
        await self._run(self.volume.mkdir, SHARES_DIR)
        self._refused_at_start = await self.ganesha.start()  # adopts a running one
        await self.ganesha.apply(
            Export(
                ANCHOR_EXPORT_ID,
                f"/{self.config.volume}",
                f"/volumes/{self.config.volume}",
                fsal=self._fsal("/"),
            )
        )

    async def stop(self, stop_servers: bool) -> None:
        self._stopping.set()
        if stop_servers:
            started = time.monotonic()
            await self.ganesha.stop()
            log.info(
                "ganesha of volume %s stopped in %.2fs",
                self.config.volume,
                time.monotonic() - started,
            )

    async def supervise(
        self, on_restart: Callable[[Sequence[str]], Awaitable[None]] | None = None
    ) -> None:
        async def restarted(refused: Sequence[RefusedExport]) -> None:
            if on_restart is not None:
                await on_restart(_share_ids(refused))

        if self._refused_at_start:
            refused, self._refused_at_start = self._refused_at_start, []
            await restarted(refused)
        await self.ganesha.supervise(restarted, until=self._stopping)

    @property
    def volume(self) -> Volume:
        if self._volume is None:
            raise FailedPrecondition("the glusterfs driver is not started")
        return self._volume

    @staticmethod
    async def _run(call: Callable[..., object], *args: object) -> object:
        """A blocking libgfapi call, off the event loop."""
        return await asyncio.to_thread(call, *args)

    # ---- stats -----------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        # Quotas are thin and shrink; Gluster snapshots need thin-LVM bricks.
        return Capabilities(
            shrink_support=True,
            thin_provisioning=True,
            max_over_subscription_ratio=self.config.max_over_subscription_ratio,
            reserved_percentage=self.config.reserved_percentage,
            availability_zone=self.config.availability_zone,
            custom=self.config.capabilities,
        )

    async def _provisioned_bytes(self) -> int:
        limits = await self.cli.limits()
        return sum(limit.hard_bytes for path, limit in limits.items() if _in_shares_dir(path))

    async def _total_bytes(self) -> int:
        return (await asyncio.to_thread(self.volume.space, "/")).total_bytes

    async def stats(self) -> BackendStats:
        space = await asyncio.to_thread(self.volume.space, "/")
        pool = PoolStats(
            name=self.config.pool_name,
            total_gib=space.total_bytes / GIB,
            # In steps of 64 MiB: the volume's own metadata (gfid links) moves by a few
            # KiB with each create, and the scheduler needs no finer a figure.
            free_gib=space.free_bytes // _FREE_STEP * _FREE_STEP / GIB,
            provisioned_gib=await self._provisioned_bytes() / GIB,
            offers=self.capabilities(),
        )
        return BackendStats(pools=(pool,))

    # ---- shares ----------------------------------------------------------------------

    def _lock(self, share: ShareSpec) -> asyncio.Lock:
        return self._locks.setdefault(share.share_id, asyncio.Lock())

    def _check(self, share: ShareSpec) -> None:
        check_share(share, self.config.pool_name)

    @staticmethod
    def _dir(share: ShareSpec) -> str:
        return f"{SHARES_DIR}/{share.share_id}"

    def _fsal(self, volpath: str) -> GlusterFsal:
        return GlusterFsal(self.config.server, self.config.volume, volpath)

    def _export(self, share: ShareSpec, clients: tuple[ClientRule, ...] = ()) -> Export:
        return Export(
            export_id=share.export_id,
            path=f"/{self.config.volume}{self._dir(share)}",
            pseudo=share_pseudo(share.share_id),
            fsal=self._fsal(self._dir(share)),
            clients=clients,
        )

    def _locations(self, share: ShareSpec) -> list[ExportLocation]:
        return [
            ExportLocation(
                path=f"{self.config.host}:{share_pseudo(share.share_id)}",
                nfs_port=self.config.nfs_port,
                mount_port=self.config.mount_port,
            )
        ]

    def gateway_access(self, share: ShareSpec) -> GatewayAccess:
        if self._native_gateways:
            # The bricks must be at `server` too: clients connect to the hosts that the
            # volume info names, and a gateway routes only to this one.
            return GatewayAccess(
                fsal="GLUSTER",
                path=f"/{self.config.volume}{self._dir(share)}",
                server=self.config.server,
                volume=self.config.volume,
                volpath=self._dir(share),
                routes=(self.config.server,),
            )
        return GatewayAccess(
            fsal="PROXY_V4",
            path=share_pseudo(share.share_id),
            nfs_port=self.config.nfs_port,
            server_generation=self.ganesha.generation(),
        )

    async def _exists(self, share: ShareSpec) -> bool:
        return bool(await self._run(self.volume.is_dir, self._dir(share)))

    async def _limit_size(self, share: ShareSpec) -> None:
        """Gives the directory its quota if it has none (a create that crashed between)."""
        if await self.cli.limit(self._dir(share)) is None:
            await self.cli.set_limit(self._dir(share), share.size_gib * GIB)

    async def create_share(self, share: ShareSpec) -> list[ExportLocation]:
        self._check(share)
        started = time.monotonic()
        async with self._lock(share):
            if not await self._exists(share):
                async with self._capacity:
                    await self._admit(share.size_gib * GIB, 0, f"{share.size_gib} GiB more")
                    await self._run(self.volume.mkdir, self._dir(share))
                    await self._limit_size(share)
            else:
                await self._limit_size(share)
            if not await self.ganesha.serves(self._export(share)):
                await self.ganesha.apply(self._export(share))
        log.info(
            "created share %s (%s GiB) in %.2fs",
            share.name,
            share.size_gib,
            time.monotonic() - started,
        )
        return self._locations(share)

    async def _admit(self, more: int, less: int, what: str) -> None:
        """Refuses what the volume may not provision (under `self._capacity`)."""
        limit = int(await self._total_bytes() * self.config.max_over_subscription_ratio)
        provisioned = await self._provisioned_bytes()
        if provisioned - less + more > limit:
            raise ResourceExhausted(
                f"pool {self.config.pool_name} may provision {limit / GIB:.0f} GiB, "
                f"{provisioned / GIB:.0f} GiB provisioned; {what} do not fit"
            )

    async def delete_share(self, share: ShareSpec) -> None:
        started = time.monotonic()
        async with self._lock(share):
            await self.ganesha.remove(share.export_id)
            # The quota first: gluster removes a limit only by its directory's path.
            await self.cli.remove_limit(self._dir(share))
            await self._run(self.volume.remove_tree, self._dir(share))
        self._locks.pop(share.share_id, None)
        log.info("deleted share %s in %.2fs", share.name, time.monotonic() - started)

    async def resize_share(self, share: ShareSpec, new_size_gib: int) -> None:
        self._check(share)
        async with self._lock(share):
            if not await self._exists(share):
                raise NotFound(f"share {share.name} has no directory on this backend")
            current = await self.cli.limit(self._dir(share))
            new = new_size_gib * GIB
            if current is not None and new == current.hard_bytes:
                return
            if current is not None and new < current.hard_bytes and current.used_bytes > new:
                raise FailedPrecondition(
                    f"cannot shrink share {share.name} from "
                    f"{current.hard_bytes // GIB} to {new_size_gib} GiB: "
                    f"{current.used_bytes} bytes are stored",
                    reason="SHRINK_WOULD_LOSE_DATA",
                )
            async with self._capacity:
                held = current.hard_bytes if current is not None else 0
                if new > held:
                    await self._admit(new, held, f"{share.name} at {new_size_gib} GiB")
                await self.cli.set_limit(self._dir(share), new)
        log.info("resized share %s to %s GiB", share.name, new_size_gib)

    async def update_access(self, share: ShareSpec, rules: Sequence[AccessRuleSpec]) -> None:
        await self.ensure_share(share, rules)

    async def ensure_share(
        self, share: ShareSpec, rules: Sequence[AccessRuleSpec]
    ) -> list[ExportLocation]:
        self._check(share)
        clients = client_blocks(rules)  # validates the rules before touching anything
        async with self._lock(share):
            if not await self._exists(share):
                raise NotFound(f"share {share.name} has no directory on this backend")
            await self.ganesha.apply(self._export(share, clients))
        return self._locations(share)

    # ---- snapshots: not offered (Gluster's need thin-LVM bricks) -----------------------

    async def create_snapshot(self, share: ShareSpec, snapshot: SnapshotSpec) -> None:
        raise unsupported("snapshot_support", f"cannot snapshot share {share.name}")

    async def delete_snapshot(self, share: ShareSpec, snapshot: SnapshotSpec) -> None:
        raise unsupported("snapshot_support", f"cannot delete snapshot {snapshot.name}")

    async def create_share_from_snapshot(
        self, share: ShareSpec, snapshot: SnapshotSpec
    ) -> list[ExportLocation]:
        raise unsupported(
            "create_share_from_snapshot_support",
            f"cannot create share {share.name} from a snapshot",
        )

    async def revert_to_snapshot(self, share: ShareSpec, snapshot: SnapshotSpec) -> None:
        raise unsupported("revert_to_snapshot_support", f"cannot revert share {share.name}")

    async def export_snapshot(
        self, share: ShareSpec, snapshot: SnapshotSpec, rules: Sequence[AccessRuleSpec]
    ) -> list[ExportLocation]:
        raise unsupported("mount_snapshot_support", f"cannot export snapshot {snapshot.name}")


def _in_shares_dir(path: str) -> bool:
    name = path.removeprefix(f"{SHARES_DIR}/")
    return name != path and bool(name) and "/" not in name


def _share_ids(refused: Sequence[RefusedExport]) -> list[str]:
    return [uid for r in refused if (uid := share_of_pseudo(r.pseudo)) is not None]
