"""The `glusterfs` driver under test: a real Gluster volume (one per session, made by
`scripts/dev-gluster`), a real Ganesha with FSAL_GLUSTER, and libnfs `nfs-cp`/`nfs-ls`
as the client. The server's side (`fill`, and why a write failed) is read over libgfapi
and the volume's quotas, never from the brick."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from conformance.harness import NfsSubject, serving
from sharemesh.driver_host.drivers import GlusterDriver, GlusterDriverConfig, ShareSpec
from sharemesh.driver_host.drivers.glusterfs import SHARES_DIR
from sharemesh.runtime.ports import free_port

from support import ensure_rpcbind


class GlusterSubject(NfsSubject[GlusterDriverConfig, GlusterDriver]):
    async def room(self, share: ShareSpec) -> int:
        limit = await self.driver.cli.limit(f"{SHARES_DIR}/{share.share_id}")
        assert limit is not None
        return limit.hard_bytes - limit.used_bytes

    async def fill(self, share: ShareSpec, leave_bytes: int) -> None:
        await asyncio.to_thread(
            self.driver.volume.allocate,
            f"{SHARES_DIR}/{share.share_id}/filler",
            await self.room(share) - leave_bytes,
        )


async def gluster_subject(
    tmp_path_factory: pytest.TempPathFactory, volume: str
) -> AsyncIterator[GlusterSubject]:
    """A driver on the session's volume with a Ganesha of its own, stopped after."""
    ensure_rpcbind()
    root = tmp_path_factory.mktemp("glusterfs")
    config = GlusterDriverConfig(
        volume=volume,
        nfs_port=free_port(),
        mount_port=free_port(),
        state_dir=root / "state",
    )
    subject = GlusterSubject(config, GlusterDriver(config), root / "scratch")
    async for started in serving(subject, root):
        yield started
