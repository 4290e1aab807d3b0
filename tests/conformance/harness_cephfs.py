"""The `cephfs` driver under test: a real one-node Ceph cluster (one per session, made by
`scripts/dev-ceph`), a real Ganesha with FSAL_CEPH, and libnfs `nfs-cp`/`nfs-ls` as the
client. The server's side (`fill`, and why a write failed) is read through libcephfs and
the subvolumes' own accounting, as an admin would."""

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
    CephFsDriver,
    CephFsDriverConfig,
    ExportLocation,
    ShareSpec,
)
from sharemesh.ganesha import share_pseudo
from sharemesh.runtime.ports import free_port

from support import ensure_rpcbind, nfs_read, nfs_url, nfs_write, processes_mentioning, run


def admin_fill(conf: Path, keyring: Path, directory: str, name: str, size: int) -> None:
    """Writes `size` bytes' worth of file (sparse: CephFS quotas count a file's size)
    into `directory` of the file system, as the admin, and flushes it to the MDS."""
    import cephfs  # Debian's python3-cephfs

    fs = cephfs.LibCephFS(conffile=str(conf), auth_id="admin", conf={"keyring": str(keyring)})
    try:
        fs.mount(filesystem_name=b"cephfs")
        fd = fs.open(f"{directory}/{name}".encode(), "w", 0o644)
        try:
            fs.ftruncate(fd, size)
            fs.fsync(fd, 0)
        finally:
            fs.close(fd)
        fs.unmount()
    finally:
        fs.shutdown()


@dataclass
class CephSubject:
    config: CephFsDriverConfig
    driver: CephFsDriver
    scratch: Path
    pool: str = "cephfs"

    async def restart(self) -> None:
        await self.driver.stop(stop_servers=False)
        self.driver = CephFsDriver(self.config)
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
        # when the subvolume's quota cannot take the file.
        info = await self.driver._info(share.share_id)
        assert info is not None and "Failed to write" in out, out
        assert info["bytes_quota"] - info["bytes_used"] < size_bytes, (info, out)
        return "NOSPC"

    async def read(self, share: ShareSpec, name: str) -> int | None:
        return await self._read(share_pseudo(share.share_id), name)

    async def fill(self, share: ShareSpec, leave_bytes: int) -> None:
        info = await self.driver._info(share.share_id)
        assert info is not None
        free = info["bytes_quota"] - info["bytes_used"]
        c = self.config
        await asyncio.to_thread(
            admin_fill, c.conf, c.keyring, info["path"], "filler", free - leave_bytes
        )

    async def mounts_at(self, location: ExportLocation) -> bool:
        return await self._lists(location.path.split(":", 1)[1])

    async def write_at(self, location: ExportLocation, name: str, size_bytes: int) -> Outcome:
        raise AssertionError("the cephfs driver serves no snapshots")

    async def read_at(self, location: ExportLocation, name: str) -> int | None:
        raise AssertionError("the cephfs driver serves no snapshots")

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


async def ceph_subject(
    tmp_path_factory: pytest.TempPathFactory, cluster: tuple[Path, Path]
) -> AsyncIterator[Subject]:
    """A driver on the session's cluster (its own subvolume group) with a Ganesha of its
    own, stopped after."""
    ensure_rpcbind()
    root = tmp_path_factory.mktemp("cephfs")
    conf, keyring = cluster
    config = CephFsDriverConfig(
        conf=conf,
        keyring=keyring,
        subvolume_group=f"conformance-{os.getpid()}",
        nfs_port=free_port(),
        mount_port=free_port(),
        state_dir=root / "state",
    )
    (root / "scratch").mkdir()
    subject = CephSubject(config, CephFsDriver(config), root / "scratch")
    try:
        await subject.driver.start()
        yield subject
    finally:
        await subject.driver.stop(stop_servers=True)
        assert not processes_mentioning(str(root)), "a test process survived"
