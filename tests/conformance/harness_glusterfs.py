"""The `glusterfs` driver under test: a real Gluster volume (one per session, made by
`scripts/dev-gluster`), a real Ganesha with FSAL_GLUSTER, and libnfs `nfs-cp`/`nfs-ls`
as the client. The server's side (`fill`, and why a write failed) is read over libgfapi
and the volume's quotas, never from the brick."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conformance.harness import CLIENT, Outcome, Subject
from sharemesh.driver_host.drivers import (
    ExportLocation,
    GlusterDriver,
    GlusterDriverConfig,
    ShareSpec,
)
from sharemesh.driver_host.drivers.glusterfs import SHARES_DIR
from sharemesh.ganesha import share_pseudo
from sharemesh.runtime.ports import free_port

from support import ensure_rpcbind, nfs_read, nfs_url, nfs_write, processes_mentioning, run


@dataclass
class GlusterSubject:
    config: GlusterDriverConfig
    driver: GlusterDriver
    scratch: Path
    pool: str = "default"

    async def restart(self) -> None:
        await self.driver.stop(stop_servers=False)
        self.driver = GlusterDriver(self.config)
        await self.driver.start()

    async def mounts(self, share: ShareSpec) -> bool:
        return await self._lists(share_pseudo(share.share_id))

    async def write(self, share: ShareSpec, name: str, size_bytes: int) -> Outcome:
        rc, out = await self._write(share_pseudo(share.share_id), name, size_bytes)
        if rc == 0:
            return "OK"
        if "ROFS" in out:
            return "ROFS"
        if "ACCES" in out or "PERM" in out:
            return "ACCES"
        # nfs-cp names no status for a failed WRITE: the server answered DQUOT exactly
        # when the share's quota cannot take the file.
        limit = await self.driver.cli.limit(f"{SHARES_DIR}/{share.share_id}")
        assert limit is not None and "Failed to write" in out, out
        assert limit.hard_bytes - limit.used_bytes < size_bytes, (limit, out)
        return "NOSPC"

    async def read(self, share: ShareSpec, name: str) -> int | None:
        return await self._read(share_pseudo(share.share_id), name)

    async def fill(self, share: ShareSpec, leave_bytes: int) -> None:
        directory = f"{SHARES_DIR}/{share.share_id}"
        limit = await self.driver.cli.limit(directory)
        assert limit is not None
        free = limit.hard_bytes - limit.used_bytes
        await asyncio.to_thread(
            self.driver.volume.allocate, f"{directory}/filler", free - leave_bytes
        )

    async def mounts_at(self, location: ExportLocation) -> bool:
        return await self._lists(location.path.split(":", 1)[1])

    async def write_at(self, location: ExportLocation, name: str, size_bytes: int) -> Outcome:
        raise AssertionError("the glusterfs driver serves no snapshots")

    async def read_at(self, location: ExportLocation, name: str) -> int | None:
        raise AssertionError("the glusterfs driver serves no snapshots")

    async def _lists(self, pseudo: str) -> bool:
        c = self.config
        parent, name = pseudo.rsplit("/", 1)
        rc, _ = await run("nfs-ls", nfs_url(CLIENT, parent, name, 3, c.nfs_port, c.mount_port))
        return rc == 0

    async def _write(self, pseudo: str, name: str, size_bytes: int) -> tuple[int, str]:
        with tempfile.NamedTemporaryFile(dir=self.scratch) as src:
            src.write(os.urandom(size_bytes))
            src.flush()
            c = self.config
            return await nfs_write(Path(src.name), CLIENT, pseudo, name, c.nfs_port, c.mount_port)

    async def _read(self, pseudo: str, name: str) -> int | None:
        with tempfile.TemporaryDirectory(dir=self.scratch) as tmp:
            dst = Path(tmp) / name
            rc, _ = await nfs_read(dst, CLIENT, pseudo, name, self.config.nfs_port)
            return dst.stat().st_size if rc == 0 else None


async def gluster_subject(
    tmp_path_factory: pytest.TempPathFactory, volume: str
) -> AsyncIterator[Subject]:
    """A driver on the session's volume with a Ganesha of its own, stopped after."""
    ensure_rpcbind()
    root = tmp_path_factory.mktemp("glusterfs")
    config = GlusterDriverConfig(
        volume=volume,
        nfs_port=free_port(),
        mount_port=free_port(),
        state_dir=root / "state",
    )
    (root / "scratch").mkdir()
    subject = GlusterSubject(config, GlusterDriver(config), root / "scratch")
    try:
        await subject.driver.start()
        yield subject
    finally:
        await subject.driver.stop(stop_servers=True)
        assert not processes_mentioning(str(root)), "a test process survived"
