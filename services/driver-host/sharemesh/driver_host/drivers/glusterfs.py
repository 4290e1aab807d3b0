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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sharemesh.ganesha import ClientRule, Export, GlusterFsal
from sharemesh.runtime import export_ids
from sharemesh.runtime.errors import FailedPrecondition, NotFound

from ._gfapi import Volume
from ._gluster_cli import GlusterCli
from ._served import GIB, ServedDriver, ServedOptions
from .base import (
    BackendStats,
    Capabilities,
    GatewayAccess,
    ShareSpec,
    check_gateway_fsal,
    gateways_reach,
)

log = logging.getLogger("sharemesh.driver_host.glusterfs")

SHARES_DIR = "/shares"
"""Where the shares' directories live in the volume; quotas elsewhere are not ours."""
_FREE_STEP = 64 << 20
ANCHOR_EXPORT_ID = export_ids.RESERVED_EXPORT_ID
"""The anchor export's id: the last of Ganesha's, which the mesh hands out last."""


@dataclass(frozen=True, kw_only=True)
class GlusterDriverConfig(ServedOptions):
    server: str = "127.0.0.1"
    """glusterd's address (the volfile server)."""
    volume: str
    """A started volume with quota enabled (`scripts/dev-gluster up DIR` makes one)."""
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


class GlusterDriver(ServedDriver):
    """Implements `Driver` on directories of one Gluster volume."""

    kind = "glusterfs"
    config: GlusterDriverConfig

    def __init__(self, config: GlusterDriverConfig) -> None:
        # Its Ganesha's orderly exit ends its volume client (~10 s) and only then exits.
        super().__init__(config, stop_timeout=1.0)
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
        self._volume: Volume | None = None

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
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
        await self._start_serving()
        await self.ganesha.apply(
            Export(
                ANCHOR_EXPORT_ID,
                f"/{self.config.volume}",
                f"/volumes/{self.config.volume}",
                fsal=self._fsal("/"),
            )
        )

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
        return self._offers(Capabilities(shrink_support=True))

    async def _provisioned_bytes(self) -> int:
        limits = await self.cli.limits()
        return sum(limit.hard_bytes for path, limit in limits.items() if _in_shares_dir(path))

    async def _total_bytes(self) -> int:
        return (await asyncio.to_thread(self.volume.space, "/")).total_bytes

    async def stats(self) -> BackendStats:
        space = await asyncio.to_thread(self.volume.space, "/")
        return self._pool_stats(
            total_gib=space.total_bytes / GIB,
            # In steps of 64 MiB: the volume's own metadata (gfid links) moves by a few
            # KiB with each create, and the scheduler needs no finer a figure.
            free_gib=space.free_bytes // _FREE_STEP * _FREE_STEP / GIB,
            provisioned_gib=await self._provisioned_bytes() / GIB,
        )

    # ---- shares ----------------------------------------------------------------------

    @staticmethod
    def _dir(share: ShareSpec) -> str:
        return f"{SHARES_DIR}/{share.share_id}"

    def _fsal(self, volpath: str) -> GlusterFsal:
        return GlusterFsal(self.config.server, self.config.volume, volpath)

    async def _export(self, share: ShareSpec, clients: tuple[ClientRule, ...]) -> Export:
        return Export(
            export_id=share.export_id,
            path=f"/{self.config.volume}{self._dir(share)}",
            pseudo=self._pseudo(share),
            fsal=self._fsal(self._dir(share)),
            clients=clients,
        )

    def _native_access(self, share: ShareSpec) -> GatewayAccess | None:
        if not self._native_gateways:
            return None
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

    async def _exists(self, share: ShareSpec) -> bool:
        return bool(await self._run(self.volume.is_dir, self._dir(share)))

    async def _limit_size(self, share: ShareSpec) -> None:
        """Gives the directory its quota if it has none (a create that crashed between)."""
        if await self.cli.limit(self._dir(share)) is None:
            await self.cli.set_limit(self._dir(share), share.size_gib * GIB)

    async def _make(self, share: ShareSpec) -> None:
        if not await self._exists(share):
            async with self._capacity:
                await self._admit(share.size_gib * GIB, 0, f"{share.size_gib} GiB more")
                await self._run(self.volume.mkdir, self._dir(share))
        await self._limit_size(share)

    async def _admit(self, more: int, less: int, what: str) -> None:
        """Refuses what the volume may not provision (under `self._capacity`)."""
        limit = int(await self._total_bytes() * self.config.max_over_subscription_ratio)
        self._check_room(limit, await self._provisioned_bytes() - less, more, what)

    async def _remove(self, share: ShareSpec) -> None:
        # The quota first: gluster removes a limit only by its directory's path.
        await self.cli.remove_limit(self._dir(share))
        await self._run(self.volume.remove_tree, self._dir(share))

    async def resize_share(self, share: ShareSpec, new_size_gib: int) -> None:
        self._check(share)
        async with self._lock(share.share_id):
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

    async def _ready(self, share: ShareSpec) -> None:
        if not await self._exists(share):
            raise NotFound(f"share {share.name} has no directory on this backend")


def _in_shares_dir(path: str) -> bool:
    name = path.removeprefix(f"{SHARES_DIR}/")
    return name != path and bool(name) and "/" not in name
