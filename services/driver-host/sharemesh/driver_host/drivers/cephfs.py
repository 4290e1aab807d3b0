"""The CephFS driver: each share a subvolume in one subvolume group, served by one
Ganesha through FSAL_CEPH.

The subvolume's quota is the share's size (a full share answers EDQUOT), so shares are
thin and grow and shrink online; a shrink below what is stored is refused. A snapshot is
a subvolume snapshot and a share from it a subvolume clone, which Ceph copies in the
background while `create_share_from_snapshot` reports how far it is. Everything goes
through mon and mgr commands (`_ceph`). Ganesha acts as a cephx user whose caps reach
only the group's directory, never as the admin.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharemesh import network
from sharemesh.ganesha import CephFsal, ClientRule, Export
from sharemesh.runtime.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)

from ._ceph import CephCluster, CephError
from ._served import GIB, ServedDriver, ServedOptions
from .base import (
    BackendStats,
    Capabilities,
    ExportLocation,
    GatewayAccess,
    ShareSpec,
    SnapshotSpec,
    check_gateway_fsal,
    gateways_reach,
    report_progress,
)

log = logging.getLogger("sharemesh.driver_host.cephfs")

_CEPH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SNAPSHOT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_CLONE_POLL = 0.5


@dataclass(frozen=True, kw_only=True)
class CephFsDriverConfig(ServedOptions):
    conf: Path
    """The cluster's ceph.conf."""
    keyring: Path
    """The keyring of `client`, which manages subvolumes and cephx users."""
    client: str = "admin"
    """The cephx user the driver acts as (`client.<client>`), whose key is in `keyring`."""
    fs_name: str = "cephfs"
    """The CephFS file system the shares are in."""
    subvolume_group: str = "sharemesh"
    """Every share of this backend is a subvolume in this group (made at start)."""
    ganesha_client: str = ""
    """The cephx user Ganesha acts as, its caps limited to the group; default
    `sharemesh-<subvolume_group>`."""
    pool_name: str = "cephfs"
    timeout_seconds: float = 30.0
    """How long one command to the cluster may take."""
    gateway_fsal: str = "NATIVE"
    """How gateways reach shares on share networks: `NATIVE` (FSAL_CEPH to the cluster,
    as Ganesha's restricted user, when the mons are off the loopback, which their
    namespaces can reach) or `PROXY_V4` (this backend's NFS export)."""


class CephFsDriver(ServedDriver):
    """Implements `Driver` on CephFS subvolumes."""

    kind = "cephfs"
    config: CephFsDriverConfig

    def __init__(self, config: CephFsDriverConfig) -> None:
        for name in ("client", "fs_name", "subvolume_group", "ganesha_client"):
            value = getattr(config, name)
            if (value or name != "ganesha_client") and not _CEPH_NAME.match(value):
                raise InvalidArgument(f"options.{name}", "letters, digits, '.', '-' and '_'")
        # libcephfs in Ganesha finds the cluster through CEPH_CONF (FSAL_CEPH has no
        # per-export config file).
        super().__init__(config, env={"CEPH_CONF": str(Path(config.conf).absolute())})
        check_gateway_fsal(config.gateway_fsal)
        self.ganesha_client = config.ganesha_client or f"sharemesh-{config.subvolume_group}"
        self.cluster = CephCluster(
            Path(config.conf), Path(config.keyring), config.client, config.timeout_seconds
        )
        self._fsal: CephFsal | None = None
        self._gateway_routes: tuple[str, ...] = ()
        """The cluster's addresses for native gateways; none: they proxy."""
        self._paths: dict[str, str] = {}
        """Subvolume paths by share id, as Ceph last told them."""

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        group = self.config.subvolume_group
        try:
            await self._mgr("fs subvolumegroup getpath", group_name=group)
        except CephError as error:
            if error.code != errno.ENOENT:
                raise _internal(error) from None
            # Only when missing: `create` sets the group's attributes, which waits out the
            # caps a killed Ganesha still holds there (~90 s), where a lookup does not.
            await self._mgr("fs subvolumegroup create", group_name=group)
        # The group's directory and nothing else; `fs authorize` returns the same key
        # to a repeat with the same caps.
        (user,) = await self.cluster.mon(
            "fs authorize",
            filesystem=self.config.fs_name,
            entity=f"client.{self.ganesha_client}",
            caps=[f"/volumes/{group}", "rw"],
        )
        self._fsal = CephFsal(self.config.fs_name, self.ganesha_client, user["key"])
        if self.config.gateway_fsal == "NATIVE":
            routes = network.read_ceph_conf(self.config.conf).routes()
            if gateways_reach(routes):
                self._gateway_routes = routes
            else:
                log.warning("gateways proxy this backend: its mons are on the loopback")
        await self._start_serving()

    async def stop(self, stop_servers: bool) -> None:
        await super().stop(stop_servers)
        self.cluster.close()

    # ---- commands --------------------------------------------------------------------

    async def _mgr(self, prefix: str, **args: Any) -> Any:
        """A volumes-module command on this backend's file system."""
        return await self.cluster.mgr(prefix, vol_name=self.config.fs_name, **args)

    async def _subvolume(self, prefix: str, share_id: str, **args: Any) -> Any:
        return await self._mgr(
            prefix, group_name=self.config.subvolume_group, sub_name=share_id, **args
        )

    async def _info(self, share_id: str) -> dict[str, Any] | None:
        """The subvolume's `info` (quota, bytes used, path), None when there is none."""
        try:
            info: dict[str, Any] = await self._subvolume("fs subvolume info", share_id)
            return info
        except CephError as error:
            if error.code == errno.ENOENT:
                return None
            raise

    async def _path(self, share: ShareSpec) -> str:
        try:
            path: str = await self._subvolume("fs subvolume getpath", share.share_id)
            self._paths[share.share_id] = path
            return path
        except CephError as error:
            if error.code == errno.ENOENT:
                raise NotFound(f"share {share.name} has no subvolume on this backend") from None
            raise _internal(error) from None

    # ---- stats -----------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        # Quotas are thin and shrink; clones are Ceph's. A revert or a mountable
        # snapshot is not built (Ceph has no subvolume rollback).
        return self._offers(
            Capabilities(
                snapshot_support=True, create_share_from_snapshot_support=True, shrink_support=True
            )
        )

    async def _provisioned_bytes(self) -> int:
        """The quotas of the group's subvolumes (a clone being made counts once ready)."""
        try:
            names = await self._mgr("fs subvolume ls", group_name=self.config.subvolume_group)
        except CephError as error:
            if error.code == errno.ENOENT:
                return 0
            raise _internal(error) from None
        total = 0
        for entry in names or ():
            try:
                info = await self._info(entry["name"])
            except CephError:
                continue  # a clone not ready yet, or gone meanwhile
            quota = (info or {}).get("bytes_quota")
            total += quota if isinstance(quota, int) else 0
        return total

    async def _cluster_bytes(self) -> tuple[int, int]:
        df = await self.cluster.mon("df")
        return int(df["stats"]["total_bytes"]), int(df["stats"]["total_avail_bytes"])

    async def stats(self) -> BackendStats:
        total, free = await self._cluster_bytes()
        return self._pool_stats(
            total_gib=total / GIB,
            # In eighths of a GiB: the OSD's own metadata moves the exact figure by
            # kilobytes every few seconds, which says nothing about room for shares.
            free_gib=(free * 8 // GIB) / 8,
            provisioned_gib=await self._provisioned_bytes() / GIB,
        )

    async def _admit(self, more_bytes: int) -> None:
        """Refuses `more_bytes` of quota the pool may not promise (under `_capacity`)."""
        total, _ = await self._cluster_bytes()
        limit = int(total * self.config.max_over_subscription_ratio)
        provisioned = await self._provisioned_bytes()
        self._check_room(limit, provisioned, more_bytes, f"{more_bytes / GIB:.0f} GiB more")

    # ---- shares ----------------------------------------------------------------------

    def _native_access(self, share: ShareSpec) -> GatewayAccess | None:
        if not self._gateway_routes:
            return None
        if self._fsal is None:
            raise Unavailable("the CephFS backend is starting")
        # The subvolume's path is known once the share was created or exported.
        return GatewayAccess(
            fsal="CEPH",
            path=self._paths.get(share.share_id, ""),
            filesystem=self._fsal.filesystem,
            user_id=self._fsal.user_id,
            secret_access_key=self._fsal.secret_access_key,
            ceph_conf=str(Path(self.config.conf).absolute()),
            routes=self._gateway_routes,
        )

    async def _export(self, share: ShareSpec, clients: tuple[ClientRule, ...]) -> Export:
        if self._fsal is None:
            raise Unavailable("the CephFS backend is starting")
        return Export(
            export_id=share.export_id,
            path=await self._path(share),
            pseudo=self._pseudo(share),
            fsal=self._fsal,
            clients=clients,
        )

    async def _make(self, share: ShareSpec) -> None:
        if await self._info(share.share_id) is None:
            async with self._capacity:
                await self._admit(share.size_gib * GIB)
                await self._subvolume(
                    "fs subvolume create", share.share_id, size=share.size_gib * GIB
                )

    def _forget(self, share_id: str) -> None:
        super()._forget(share_id)
        self._paths.pop(share_id, None)

    async def _remove(self, share: ShareSpec) -> None:
        """Removes the subvolume; a missing one is success, as is a failed clone."""
        try:
            await self._subvolume("fs subvolume rm", share.share_id, force=True)
        except CephError as error:
            if error.code == errno.ENOTEMPTY:
                raise FailedPrecondition(
                    f"share {share.name} still has snapshots; delete them first",
                    reason="SHARE_HAS_SNAPSHOTS",
                ) from None
            if error.code != errno.EAGAIN:
                raise _internal(error) from None
            # A clone still copying: stop it, then remove what it made.
            await self._mgr(
                "fs clone cancel",
                group_name=self.config.subvolume_group,
                clone_name=share.share_id,
            )
            await self._subvolume("fs subvolume rm", share.share_id, force=True)

    async def resize_share(self, share: ShareSpec, new_size_gib: int) -> None:
        self._check(share)
        new = new_size_gib * GIB
        async with self._lock(share.share_id):
            info = await self._info(share.share_id)
            if info is None:
                raise NotFound(f"share {share.name} has no subvolume on this backend")
            current = info.get("bytes_quota")
            used = int(info.get("bytes_used", 0))
            if used > new:
                raise _would_lose_data(share, new_size_gib, used)
            async with self._capacity:
                if isinstance(current, int) and new > current:
                    await self._admit(new - current)
                try:
                    await self._subvolume(
                        "fs subvolume resize", share.share_id, new_size=str(new), no_shrink=False
                    )
                except CephError as error:
                    # Data written since the look above: Ceph checks again.
                    if error.code == errno.EINVAL and "used size" in error.message:
                        raise _would_lose_data(share, new_size_gib, used) from None
                    raise _internal(error) from None
        log.info("resized share %s to %s GiB", share.name, new_size_gib)

    # ---- snapshots: Ceph's subvolume snapshots and clones ------------------------------

    async def create_snapshot(self, share: ShareSpec, snapshot: SnapshotSpec) -> None:
        self._check(share)
        _check_snapshot(snapshot)
        async with self._lock(share.share_id):
            try:  # a repeat of an existing snapshot succeeds
                await self._subvolume(
                    "fs subvolume snapshot create", share.share_id, snap_name=snapshot.snapshot_id
                )
            except CephError as error:
                if error.code == errno.ENOENT:
                    raise NotFound(f"share {share.name} has no subvolume on this backend") from None
                raise _internal(error) from None
        log.info("snapshot %s of %s taken", snapshot.name, share.name)

    async def delete_snapshot(self, share: ShareSpec, snapshot: SnapshotSpec) -> None:
        _check_snapshot(snapshot)
        async with self._lock(snapshot.share_id):
            try:
                await self._subvolume(
                    "fs subvolume snapshot rm",
                    snapshot.share_id,
                    snap_name=snapshot.snapshot_id,
                    force=True,  # a missing snapshot is success
                )
            except CephError as error:
                if error.code == errno.ENOENT:
                    return  # its share is gone too
                if error.code == errno.EAGAIN:  # clones of it are still copying
                    raise Unavailable(f"snapshot {snapshot.name} is being cloned") from None
                raise _internal(error) from None
        log.info("deleted snapshot %s", snapshot.name)

    async def create_share_from_snapshot(
        self, share: ShareSpec, snapshot: SnapshotSpec
    ) -> list[ExportLocation]:
        self._check(share)
        _check_snapshot(snapshot)
        if share.size_gib < snapshot.size_gib:
            raise InvalidArgument(
                "size_gib", f"must be at least the snapshot's {snapshot.size_gib} GiB"
            )
        started = time.monotonic()
        async with self._lock(share.share_id):
            # A repeat finds the clone made, copying (it waits again) or failed (made anew).
            state = await self._clone_state(share)
            if state in ("failed", "canceled"):
                await self._remove(share)
                state = None
            if state is None and await self._info(share.share_id) is None:
                async with self._capacity:
                    await self._admit(share.size_gib * GIB)
                    await self._clone(share, snapshot)
            await self._wait_for_clone(share, snapshot)
            # A clone has its source's quota: the share's own size now.
            await self._subvolume(
                "fs subvolume resize",
                share.share_id,
                new_size=str(share.size_gib * GIB),
                no_shrink=False,
            )
            await self._serve_to_nobody(share)
        return self._created(share, started, snapshot)

    async def _clone(self, share: ShareSpec, snapshot: SnapshotSpec) -> None:
        group = self.config.subvolume_group
        try:
            await self._mgr(
                "fs subvolume snapshot clone",
                group_name=group,
                sub_name=snapshot.share_id,
                snap_name=snapshot.snapshot_id,
                target_sub_name=share.share_id,
                target_group_name=group,
            )
        except CephError as error:
            if error.code == errno.ENOENT:
                raise NotFound(f"snapshot {snapshot.name} does not exist on this backend") from None
            raise _internal(error) from None

    async def _clone_state(self, share: ShareSpec) -> str | None:
        """`pending`, `in-progress`, `complete`, `failed` or `canceled`; None when the
        share is no clone (or none yet)."""
        status = await self._clone_status(share)
        return None if status is None else str(status.get("state"))

    async def _clone_status(self, share: ShareSpec) -> dict[str, Any] | None:
        try:
            answer = await self._mgr(
                "fs clone status",
                group_name=self.config.subvolume_group,
                clone_name=share.share_id,
            )
        except CephError as error:
            if error.code in (errno.ENOENT, errno.EINVAL):  # no such subvolume, or no clone
                return None
            raise _internal(error) from None
        status: dict[str, Any] = answer["status"]
        return status

    async def _wait_for_clone(self, share: ShareSpec, snapshot: SnapshotSpec) -> None:
        """Until Ceph has copied the snapshot, reporting how far it is; a failed clone
        is removed (a repeat makes it anew)."""
        while True:
            status = await self._clone_status(share)
            state = None if status is None else status.get("state")
            if state in (None, "complete"):
                await report_progress(100, f"cloned from snapshot {snapshot.snapshot_id}")
                return
            if state in ("failed", "canceled"):
                log.error("clone %s of %s: %s", share.share_id, snapshot.name, status)
                await self._remove(share)
                raise Internal(f"copying snapshot {snapshot.name} into share {share.name} failed")
            # Ceph from Quincy on says how much it copied; Pacific only the state.
            report = (status or {}).get("progress_report", {})
            percent = _percent(report.get("percentage cloned", "0"))
            await report_progress(percent, f"clone {state}")
            await asyncio.sleep(_CLONE_POLL)


def _percent(text: object) -> int:
    try:
        return max(0, min(99, int(float(str(text).rstrip("%")))))
    except ValueError:
        return 0


def _would_lose_data(share: ShareSpec, new_size_gib: int, used: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"cannot shrink share {share.name} to {new_size_gib} GiB: it holds {used / GIB:.2f} GiB",
        reason="SHRINK_WOULD_LOSE_DATA",
        metadata={"used_bytes": str(used)},
    )


def _internal(error: CephError) -> Internal:
    """What a retry cannot fix; Ceph's words stay in the log."""
    log.error("ceph: %s", error)
    return Internal(f"the Ceph cluster refused {str(error).split(':')[0]!r}")


def _check_snapshot(snapshot: SnapshotSpec) -> None:
    if not _SNAPSHOT_ID.match(snapshot.snapshot_id):
        raise InvalidArgument("snapshot_id", "letters, digits, '-' and '_' only, at most 128")
