"""The `cephfs` driver under test: a real one-node Ceph cluster (one per session, made by
`scripts/dev-ceph`), a real Ganesha with FSAL_CEPH, and libnfs `nfs-cp`/`nfs-ls` as the
client. The server's side (`fill`, and why a write failed) is read through libcephfs and
the subvolumes' own accounting, as an admin would."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conformance.harness import NfsSubject, serving
from sharemesh.driver_host.drivers import CephFsDriver, CephFsDriverConfig, ShareSpec
from sharemesh.runtime.ports import free_port

from support import ensure_rpcbind


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


class CephSubject(NfsSubject[CephFsDriverConfig, CephFsDriver]):
    async def room(self, share: ShareSpec) -> int:
        info = await self.driver._info(share.share_id)
        assert info is not None
        return int(info["bytes_quota"] - info["bytes_used"])

    async def fill(self, share: ShareSpec, leave_bytes: int) -> None:
        info = await self.driver._info(share.share_id)
        assert info is not None
        free = info["bytes_quota"] - info["bytes_used"]
        c = self.config
        await asyncio.to_thread(
            admin_fill, c.conf, c.keyring, info["path"], "filler", free - leave_bytes
        )


async def ceph_subject(
    tmp_path_factory: pytest.TempPathFactory, cluster: tuple[Path, Path]
) -> AsyncIterator[CephSubject]:
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
    subject = CephSubject(config, CephFsDriver(config), root / "scratch", pool="cephfs")
    async for started in serving(subject, root):
        yield started
