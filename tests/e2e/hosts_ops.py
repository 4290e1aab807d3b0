"""A mesh of three hosts (`sharemesh up --hosts 3`) for the multi-host test and its
benchmark: tenants' guests on hosts 2 and 3, a share whose backend is on host 1, and
guest traffic whose stalls are timed while hosts die and restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from sharemesh.client import Client
from sharemesh.launcher import HostsMesh
from sharemesh.runtime.coordination import connect
from sharemesh.v1 import share_network_pb2
from sharemesh.v1 import share_network_service_pb2 as sns
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import RW, TENANT_KEYS, Share, grant, nfs_location
from support import assert_host_clean, ensure_rpcbind, run

HOSTS_CONFIG = (
    """
reconcile_interval_seconds = 2
[[backends]]
name = "local"
host = "host-1"
[backends.options]
capacity_gib = 6
"""
    + TENANT_KEYS
)


@contextlib.asynccontextmanager
async def running_hosts(state: Path, config: str = HOSTS_CONFIG) -> AsyncIterator[HostsMesh]:
    """Three hosts; afterwards the machine must be clean of their namespaces, mounts,
    loop devices and processes."""
    ensure_rpcbind()
    (state / "mesh.toml").write_text(config)
    async with HostsMesh(state, 3, state / "mesh.toml", lease_ttl_seconds=3) as mesh:
        yield mesh
    assert_host_clean(state)
    assert not [h for h in mesh.hosts if Path(f"/run/netns/{h.netns}").exists()]


@contextlib.asynccontextmanager
async def client(mesh: HostsMesh, token: str, host: int = 0) -> AsyncIterator[Client]:
    """A client of the api on the first (or another) api host, trusting the mesh CA."""
    async with Client(mesh.api_addresses[host], token, ca_file=mesh.ca_file) as made:
        yield made


async def attach_on(admin: Client, network: str, netns: str, address: str, host: str) -> None:
    op = await admin.call(
        admin.networks.CreateAttachment,
        sns.CreateAttachmentRequest(
            parent=network,
            attachment_id=netns.replace("_", "-"),
            attachment=share_network_pb2.Attachment(netns=netns, address=address, host=host),
        ),
    )
    await admin.wait(op)


async def shared_share(
    alpha: Client, admin: Client, guests: dict[str, tuple[str, str]], net_id: str
) -> Share:
    """A share on a new network, its guests (`host: (netns, address)`) attached on their
    hosts and granted."""
    op = await alpha.call(
        alpha.networks.CreateShareNetwork,
        sns.CreateShareNetworkRequest(
            parent="projects/alpha",
            share_network_id=net_id,
            share_network=share_network_pb2.ShareNetwork(cidr="10.31.0.0/24"),
        ),
    )
    network = (await alpha.wait(op, share_network_pb2.ShareNetwork)).name
    for host, (netns, address) in guests.items():
        await attach_on(admin, network, netns, address, host)
    op = await alpha.call(
        alpha.shares.CreateShare,
        ss.CreateShareRequest(
            parent="projects/alpha",
            share_id=f"{net_id}-share",
            share=Share(size_gib=1, share_network=network),
        ),
    )
    share = await alpha.wait(op, Share)
    assert share is not None and share.state == Share.ACTIVE, share
    for _, address in guests.values():
        await grant(alpha, share.name, address, RW)
    return share


@dataclass
class Traffic:
    """A guest that reads one file and writes a new one, over and over, through its
    host's gateway; when each round succeeded, and what failed."""

    netns: str
    share: Share
    work: Path
    ok: list[float] = field(default_factory=list)
    failed: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """What the last failed rounds' client said."""
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Traffic:
        self.work.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        data = self.work / "out.bin"
        data.write_bytes(os.urandom(64 << 10))
        back = self.work / "back.bin"
        run_id, n = uuid.uuid4().hex[:6], 0
        while True:
            n += 1
            name = f"{self.netns}-{run_id}-{n}.bin"  # nfs-cp never writes over a file
            wrote, said = await _nfs_cp(self.netns, str(data), nfs_location(self.share, name, 3))
            back.unlink(missing_ok=True)
            if wrote == 0:
                read, said = await _nfs_cp(self.netns, nfs_location(self.share, name, 4), str(back))
            good = wrote == 0 and read == 0 and back.read_bytes() == data.read_bytes()
            (self.ok if good else self.failed).append(time.monotonic())
            if not good:
                self.errors[:] = [*self.errors[-4:], f"{time.monotonic():.1f}: {said.strip()}"]
            await asyncio.sleep(0.1)

    def longest_stall(self, since: float, until: float) -> float:
        """The longest time between two successful rounds in [since, until]."""
        marks = [since, *[t for t in self.ok if since < t < until], until]
        return max(b - a for a, b in zip(marks, marks[1:], strict=False))

    def succeeded_between(self, since: float, until: float) -> int:
        return sum(1 for t in self.ok if since <= t <= until)


async def _nfs_cp(netns: str, *args: str) -> tuple[int, str]:
    return await run("ip", "netns", "exec", netns, "timeout", "8", "nfs-cp", *args)


async def wait_for_leader(mesh: HostsMesh, host: str, timeout: float = 30.0) -> float:
    """Waits until `host`'s scheduler leads; when it was first seen leading."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await mesh.scheduler_leader() == host:
            return time.monotonic()
        await asyncio.sleep(0.1)
    raise AssertionError(f"{host}'s scheduler did not lead within {timeout}s")


async def etcd_members_answering(mesh: HostsMesh) -> list[str]:
    """The hosts whose etcd member answers a linearizable read."""
    answering = []
    for host in mesh.hosts:
        with contextlib.suppress(Exception):
            endpoint = mesh.etcd[host.name].endpoint
            async with connect(endpoint, timeout=2.0, identity=mesh.operator()) as etcd:
                await etcd.get(b"/sharemesh/quorum-check")
            answering.append(host.name)
    return answering
