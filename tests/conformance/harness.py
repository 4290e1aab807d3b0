"""What the conformance tests need from a driver under test beyond the contract: a way to
restart it and a client that tries the shares as a tenant would.

The drivers served by a Ganesha of their own (`local`, `cephfs`, `glusterfs`) answer
through a real NFS client (libnfs `nfs-cp`/`nfs-ls` on 127.0.0.1), `NfsSubject`, each
saying only how its server tells a full share; `fake` answers through its in-memory
model. The tests never look at which one they have.
"""

from __future__ import annotations

import errno
import itertools
import os
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

from sharemesh.driver_host.drivers import (
    AccessLevel,
    Driver,
    ExportLocation,
    FakeDriver,
    LocalDriver,
    LocalDriverConfig,
    ShareSpec,
)
from sharemesh.driver_host.drivers._served import ServedDriver, ServedOptions
from sharemesh.ganesha import share_pseudo

from support import nfs_read, nfs_url, nfs_write, processes_mentioning, run

Outcome = Literal["OK", "NOSPC", "ROFS", "ACCES"]
"""What a client's write got: written, the share is full, read-only, or not allowed."""

CLIENT = "127.0.0.1"
"""The address the tests' client comes from."""
OTHER = "10.255.0.9"
"""An address of some other client (no test sends from it)."""


class Subject(Protocol):
    """A driver under test, with a client."""

    driver: Driver
    pool: str

    async def restart(self) -> None:
        """The driver host restarts: stop the driver but not its servers, then start a
        new driver on the same state."""

    async def mounts(self, share: ShareSpec) -> bool:
        """The client can mount the share and list it."""

    async def write(self, share: ShareSpec, name: str, size_bytes: int) -> Outcome:
        """The client writes a new file of random bytes."""

    async def read(self, share: ShareSpec, name: str) -> int | None:
        """The bytes the client reads back from a file, or None if it cannot."""

    async def fill(self, share: ShareSpec, leave_bytes: int) -> None:
        """Fill the share from the server's side until `leave_bytes` are free."""

    async def mounts_at(self, location: ExportLocation) -> bool:
        """The client can mount what is exported at `location` (e.g. a snapshot's)."""

    async def write_at(self, location: ExportLocation, name: str, size_bytes: int) -> Outcome:
        """The client writes a new file at `location` (ROFS, ACCES or OK; never NOSPC)."""

    async def read_at(self, location: ExportLocation, name: str) -> int | None:
        """The bytes the client reads back from a file at `location`, or None."""


def _pseudo(location: ExportLocation) -> str:
    return location.path.split(":", 1)[1]


_ids = itertools.count(1)


def new_share(subject: Subject, size_gib: int = 1) -> ShareSpec:
    """A share no test used before (export ids too: unique per NFS server)."""
    n = next(_ids)
    return ShareSpec(
        share_id=f"conf-{n}-{os.getpid()}",
        name=f"projects/p/locations/l/shares/conf-{n}",
        size_gib=size_gib,
        pool=subject.pool,
        export_id=200 + n,
    )


async def reach(subject: Subject, share: ShareSpec) -> AccessLevel | None:
    """The access the client really has: none, read-only or read-write."""
    if not await subject.mounts(share):
        return None
    outcome = await subject.write(share, f"probe-{os.urandom(4).hex()}", 1024)
    if outcome == "OK":
        return "READ_WRITE"
    assert outcome == "ROFS", f"a client that mounts {share.share_id} could not write: {outcome}"
    return "READ_ONLY"


Options = TypeVar("Options", bound=ServedOptions)
Served = TypeVar("Served", bound=ServedDriver)


@dataclass
class NfsSubject(Generic[Options, Served]):
    """A driver served by a Ganesha of its own, tried with libnfs as a tenant would."""

    config: Options
    """The driver's config: a restart starts a new driver from it."""
    driver: Served
    scratch: Path
    pool: str = "default"

    async def restart(self) -> None:
        await self.driver.stop(stop_servers=False)
        self.driver = type(self.driver)(self.config)
        await self.driver.start()

    async def room(self, share: ShareSpec) -> int:
        """The bytes the share can still take, as its server counts them."""
        raise NotImplementedError

    async def mounts(self, share: ShareSpec) -> bool:
        return await self._lists(share_pseudo(share.share_id))

    async def write(self, share: ShareSpec, name: str, size_bytes: int) -> Outcome:
        outcome, out = await self._write(share_pseudo(share.share_id), name, size_bytes)
        if outcome is not None:
            return outcome
        # nfs-cp names no status for a failed WRITE: the server answered NOSPC (or
        # DQUOT) exactly when the share cannot take the file.
        assert "Failed to write" in out, out
        room = await self.room(share)
        assert room < size_bytes, (room, out)
        return "NOSPC"

    async def read(self, share: ShareSpec, name: str) -> int | None:
        return await self._read(share_pseudo(share.share_id), name)

    async def mounts_at(self, location: ExportLocation) -> bool:
        assert location.nfs_port == self.config.nfs_port, location
        return await self._lists(_pseudo(location))

    async def write_at(self, location: ExportLocation, name: str, size_bytes: int) -> Outcome:
        outcome, out = await self._write(_pseudo(location), name, size_bytes)
        assert outcome is not None, out
        return outcome

    async def read_at(self, location: ExportLocation, name: str) -> int | None:
        return await self._read(_pseudo(location), name)

    async def _lists(self, pseudo: str) -> bool:
        c = self.config
        parent, name = pseudo.rsplit("/", 1)
        rc, _ = await run("nfs-ls", nfs_url(CLIENT, parent, name, 3, c.nfs_port, c.mount_port))
        return rc == 0

    async def _write(self, pseudo: str, name: str, size_bytes: int) -> tuple[Outcome | None, str]:
        """The outcome, or None for a failed write whose status nfs-cp does not name."""
        with tempfile.NamedTemporaryFile(dir=self.scratch) as src:
            src.write(os.urandom(size_bytes))
            src.flush()
            c = self.config
            rc, out = await nfs_write(
                Path(src.name), CLIENT, pseudo, name, c.nfs_port, c.mount_port
            )
        if rc == 0:
            return "OK", out
        if "ROFS" in out:
            return "ROFS", out
        if "ACCES" in out or "PERM" in out:
            return "ACCES", out
        return None, out

    async def _read(self, pseudo: str, name: str) -> int | None:
        with tempfile.TemporaryDirectory(dir=self.scratch) as tmp:
            dst = Path(tmp) / name
            rc, _ = await nfs_read(dst, CLIENT, pseudo, name, self.config.nfs_port)
            return dst.stat().st_size if rc == 0 else None


Tried = TypeVar("Tried", bound=NfsSubject[Any, Any])


async def serving(subject: Tried, root: Path) -> AsyncIterator[Tried]:
    """The subject's driver started, then stopped with its servers; no process of the
    test's (under `root`) may outlive it."""
    subject.scratch.mkdir(exist_ok=True)
    try:
        await subject.driver.start()
        yield subject
    finally:
        await subject.driver.stop(stop_servers=True)
        assert not processes_mentioning(str(root)), "a test process survived"


class LocalSubject(NfsSubject[LocalDriverConfig, LocalDriver]):
    async def room(self, share: ShareSpec) -> int:
        st = os.statvfs(self.mountpoint(share))
        return st.f_bavail * st.f_frsize

    async def fill(self, share: ShareSpec, leave_bytes: int) -> None:
        filler = self.mountpoint(share) / "filler"
        size = await self.room(share) - leave_bytes
        subprocess.run(["fallocate", "-l", str(size), str(filler)], check=True)

    def mountpoint(self, share: ShareSpec) -> Path:
        return Path(self.config.pool_dir) / "mnt" / share.share_id


@dataclass
class FakeSubject:
    driver: FakeDriver
    pool: str = "default"

    async def restart(self) -> None:
        await self.driver.stop(stop_servers=False)
        self.driver = FakeDriver(self.driver.config, self.driver.backend)
        await self.driver.start()

    async def mounts(self, share: ShareSpec) -> bool:
        try:
            self.driver.backend.mount(share.share_id, CLIENT)
        except OSError:
            return False
        return True

    async def write(self, share: ShareSpec, name: str, size_bytes: int) -> Outcome:
        try:
            self.driver.backend.write(share.share_id, name, size_bytes, CLIENT)
        except OSError as error:
            return _OUTCOMES[error.errno]
        return "OK"

    async def read(self, share: ShareSpec, name: str) -> int | None:
        try:
            return self.driver.backend.read(share.share_id, name, CLIENT)
        except OSError:
            return None

    async def fill(self, share: ShareSpec, leave_bytes: int) -> None:
        self.driver.backend.fill(share.share_id, leave_bytes)

    # The fake serves exports of snapshots only besides its shares' (`snapshot_pseudo`).

    def _snapshot_level(self, location: ExportLocation) -> tuple[str, AccessLevel | None]:
        snapshot_id = _pseudo(location).removeprefix("/snapshots/")
        return snapshot_id, self.driver.backend.snapshot_access(snapshot_id, CLIENT)

    async def mounts_at(self, location: ExportLocation) -> bool:
        return self._snapshot_level(location)[1] is not None

    async def write_at(self, location: ExportLocation, name: str, size_bytes: int) -> Outcome:
        level = self._snapshot_level(location)[1]
        return "ACCES" if level is None else "ROFS" if level == "READ_ONLY" else "OK"

    async def read_at(self, location: ExportLocation, name: str) -> int | None:
        snapshot_id, level = self._snapshot_level(location)
        if level is None:
            return None
        return self.driver.backend.snapshots[snapshot_id].files.get(name)


_OUTCOMES: dict[int | None, Outcome] = {
    errno.ENOSPC: "NOSPC",
    errno.EROFS: "ROFS",
    errno.EACCES: "ACCES",
}
