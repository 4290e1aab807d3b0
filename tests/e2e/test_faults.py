"""Transient faults heal: etcd killed or stalled past the lease, a Ganesha restarting
under a change, a driver-host held down while a create waits. Acknowledged operations
end done without error, shares end ACTIVE and serve over NFS, nothing stays stuck; and
a mesh stopped while etcd is dead still leaves the host clean."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import message

from sharemesh.client import Client, OperationFailed
from sharemesh.launcher import LocalMesh
from sharemesh.runtime.coordination import Store, connect, keys
from sharemesh.runtime.lifecycle.share import public
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import (
    RO,
    RW,
    TENANT_KEYS,
    AccessRule,
    Share,
    create_share,
    delete_share,
    grant,
    live_shares,
    read,
    running_mesh,
    write,
)
from support import assert_host_clean, ensure_rpcbind, mounts_under, pid_alive

pytestmark = pytest.mark.e2e

DRIVER_HOST = "driver-host-local"
LEASE_TTL = 3
ZONE = "zone-a"
CONFIG = (
    """
reconcile_interval_seconds = 2
retry_deadline_seconds = {deadline}

[[backends]]
name = "local"
driver = "local"
[backends.options]
capacity_gib = 12
availability_zone = "{zone}"
"""
    + TENANT_KEYS
)
# While etcd or the api is away a call answers one of these; the caller retries it
# with the same request_id, so it acts once.
_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
T = TypeVar("T")


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalMesh]:
    async with running_mesh(tmp_path_factory, CONFIG.format(zone=ZONE, deadline=180)) as mesh:
        yield mesh


async def _persist(call: Callable[[], Awaitable[T]], timeout: float = 120) -> T:
    """`call` again while the mesh answers that it is away, until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if error.code() not in _TRANSIENT or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


async def _acknowledged(client: Client, method, request) -> operations_pb2.Operation:  # type: ignore[no-untyped-def]
    return await _persist(lambda: client.call(method, request, timeout=10))


async def _done(
    client: Client, op: operations_pb2.Operation, response_type: type[message.Message] | None
) -> message.Message | None:
    """The operation's response once done; OperationFailed if it ended in error."""
    return await _persist(lambda: client.wait(op, response_type, timeout=150), timeout=180)


async def _create(client: Client, share_id: str) -> Share:
    request = ss.CreateShareRequest(
        parent="projects/alpha",
        share_id=share_id,
        share=Share(size_gib=1),
        request_id=str(uuid.uuid4()),
    )
    op = await _acknowledged(client, client.shares.CreateShare, request)
    share = await _done(client, op, Share)
    assert isinstance(share, Share)
    return share


async def _grant(client: Client, share: str, access_to: str, level: int) -> AccessRule:
    request = ss.CreateAccessRuleRequest(
        parent=share,
        access_rule=AccessRule(access_to=access_to, access_level=level),
        request_id=str(uuid.uuid4()),
    )
    op = await _acknowledged(client, client.shares.CreateAccessRule, request)
    rule = await _done(client, op, AccessRule)
    assert isinstance(rule, AccessRule) and rule.state == AccessRule.ACTIVE
    return rule


async def _journey(client: Client, share_id: str) -> Share:
    """A tenant's create then grant, each retried with its request id."""
    share = await _create(client, share_id)
    await _grant(client, share.name, "127.0.0.1", RW)
    return share


async def _serves(client: Client, share: Share, tmp_path: Path) -> None:
    """ACTIVE, and what is written over NFSv3 reads back over NFSv4."""
    now = await _persist(
        lambda: client.call(client.shares.GetShare, ss.GetShareRequest(name=share.name))
    )
    assert now.state == Share.ACTIVE, (now.name, now.state_message)
    data = tmp_path / f"{share.name.rsplit('/', 1)[-1]}.bin"
    data.write_bytes(os.urandom(64 << 10))
    back = tmp_path / "back.bin"
    async with asyncio.timeout(60):
        while (await write(now, data, "data.bin"))[0] != 0 or (await read(now, back, "data.bin"))[
            0
        ]:
            await asyncio.sleep(0.5)
    assert back.read_bytes() == data.read_bytes()


async def _nothing_stuck(mesh: LocalMesh) -> None:
    """Every share ACTIVE, every rule ACTIVE, no operation left pending in etcd."""
    assert mesh.etcd is not None
    async with connect(mesh.etcd.endpoint) as client:
        store = Store(client)
        shares = await store.scan(store.root + "shares/", records_pb2.ShareRecord)
        rules = await store.scan(store.root + "accessRules/", records_pb2.AccessRuleRecord)
    assert [s.value.spec.share.name for s in shares if public(s.value).state != Share.ACTIVE] == []
    assert [s.value.spec.share.name for s in shares if s.value.pending_operations] == []
    assert [r.value.rule.name for r in rules if r.value.rule.state != AccessRule.ACTIVE] == []


async def _delete_all(client: Client, mesh: LocalMesh) -> None:
    for record in await live_shares(mesh):
        name = record.spec.share.name
        await _persist(lambda name=name: delete_share(client, name))  # type: ignore[misc]


async def _registered(mesh: LocalMesh) -> bool:
    assert mesh.etcd is not None
    async with connect(mesh.etcd.endpoint) as client:
        store = Store(client)
        found = await store.get(keys.backend_key(store.root, "local"), records_pb2.BackendRecord)
        return found is not None


def _ganesha_pid(mesh: LocalMesh) -> int | None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        pid = int((mesh.state_dir / "pools/local/ganesha/ganesha/ganesha.pid").read_text())
        return pid if pid_alive(pid) else None
    return None


async def test_etcd_killed_under_load_comes_back_and_nothing_is_lost(
    mesh: LocalMesh, alpha: Client, tmp_path: Path
) -> None:
    assert mesh.etcd is not None and mesh.etcd.pid
    killed = mesh.etcd.pid
    try:
        load = [asyncio.create_task(_journey(alpha, f"kill-{i}")) for i in range(4)]
        await asyncio.sleep(0.1)
        os.kill(killed, signal.SIGKILL)
        # Asked while etcd is dead: they are answered once the launcher has it back.
        load += [asyncio.create_task(_journey(alpha, f"kill-late-{i}")) for i in range(2)]
        shares = await asyncio.gather(*load)
        async with asyncio.timeout(30):
            while mesh.etcd.pid in (None, killed) or not pid_alive(mesh.etcd.pid):
                await asyncio.sleep(0.1)
        for share in shares:
            await _serves(alpha, share, tmp_path)
        await _nothing_stuck(mesh)
    finally:
        await _delete_all(alpha, mesh)


async def test_etcd_stalled_past_the_lease_fails_no_operation(
    mesh: LocalMesh, alpha: Client, tmp_path: Path
) -> None:
    assert mesh.etcd is not None and mesh.etcd.pid
    try:
        existing = await create_share(alpha, "alpha", "stall-existing")
        stalled = mesh.etcd.pid
        load = [asyncio.create_task(_journey(alpha, f"stall-{i}")) for i in range(3)]
        load.append(asyncio.create_task(_grant(alpha, existing.name, "127.0.0.1", RW)))
        await asyncio.sleep(0.4)
        os.kill(stalled, signal.SIGSTOP)
        try:
            # Creates asked during the stall land while the services start over, the
            # scheduler perhaps before the driver-host has registered again.
            load += [asyncio.create_task(_journey(alpha, f"stall-late-{i}")) for i in range(2)]
            await asyncio.sleep(2 * LEASE_TTL + 1)  # every lease runs out meanwhile
        finally:
            os.kill(stalled, signal.SIGCONT)
        results = await asyncio.gather(*load)
        made = [r for r in results if isinstance(r, Share)]
        for share in [*made, existing]:
            await _serves(alpha, share, tmp_path)
        await _nothing_stuck(mesh)
    finally:
        await _delete_all(alpha, mesh)


async def test_changes_while_ganesha_restarts_end_done(
    mesh: LocalMesh, alpha: Client, tmp_path: Path
) -> None:
    """A resize and a rule change reach a Ganesha that is being killed and restarted:
    they wait for it and end done; the share stays ACTIVE, not ERROR."""
    try:
        share = await create_share(alpha, "alpha", "through-restarts")
        await grant(alpha, share.name, "127.0.0.1", RW)
        data = tmp_path / "data.bin"
        data.write_bytes(os.urandom(64 << 10))
        assert (await write(share, data, "data.bin"))[0] == 0

        killer = asyncio.create_task(_keep_killing_ganesha(mesh, 4))
        await asyncio.sleep(0.2)
        resize = await alpha.call(
            alpha.shares.ResizeShare, ss.ResizeShareRequest(name=share.name, size_gib=2)
        )
        rule = await alpha.call(
            alpha.shares.CreateAccessRule,
            ss.CreateAccessRuleRequest(
                parent=share.name, access_rule=AccessRule(access_to="127.0.0.2", access_level=RO)
            ),
        )
        assert await killer > 0
        grown = await alpha.wait(resize, Share, timeout=120)
        added = await alpha.wait(rule, AccessRule, timeout=120)
        assert grown is not None and grown.size_gib == 2
        assert added is not None and added.state == AccessRule.ACTIVE
        now = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=share.name))
        assert now.state == Share.ACTIVE and now.size_gib == 2, now.state_message
        back = tmp_path / "back.bin"
        async with asyncio.timeout(60):
            while (await read(now, back, "data.bin"))[0] != 0:
                await asyncio.sleep(0.5)
        assert back.read_bytes() == data.read_bytes()
        await _nothing_stuck(mesh)
    finally:
        await _delete_all(alpha, mesh)


async def test_a_create_waits_for_a_driver_host_that_is_down(
    mesh: LocalMesh, alpha: Client, tmp_path: Path
) -> None:
    """The only driver-host is frozen past its lease: no backend is registered. A create
    then waits in CREATING instead of failing, and completes once the backend is back."""
    child = mesh.children[DRIVER_HOST]
    assert child.pid
    frozen = child.pid
    try:
        os.kill(frozen, signal.SIGSTOP)
        try:
            async with asyncio.timeout(3 * LEASE_TTL):
                while await _registered(mesh):
                    await asyncio.sleep(0.2)
            op = await alpha.call(
                alpha.shares.CreateShare,
                ss.CreateShareRequest(
                    parent="projects/alpha", share_id="waits", share=Share(size_gib=1)
                ),
            )
            await asyncio.sleep(LEASE_TTL + 3)  # a reconcile and several placement tries
            waiting = await alpha.call(
                alpha.shares.GetShare, ss.GetShareRequest(name="projects/alpha/shares/waits")
            )
            assert waiting.state == Share.CREATING, waiting.state_message
        finally:
            os.kill(frozen, signal.SIGCONT)
        share = await _done(alpha, op, Share)
        assert isinstance(share, Share) and share.state == Share.ACTIVE
        await _grant(alpha, share.name, "127.0.0.1", RW)
        await _serves(alpha, share, tmp_path)
    finally:
        await _delete_all(alpha, mesh)


@pytest.fixture(scope="module")
async def hasty(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalMesh]:
    """A mesh whose changes give up on a transient fault after 4 s."""
    async with running_mesh(tmp_path_factory, CONFIG.format(zone=ZONE, deadline=4)) as mesh:
        yield mesh


async def _keep_killing_ganesha(mesh: LocalMesh, seconds: float) -> int:
    """Kills every Ganesha the driver-host starts, for `seconds`, as soon as it runs (found
    by its command line, before it writes a pidfile: a restarted Ganesha is ready, and
    takes an export, within tens of milliseconds); how many it killed."""
    config = str(mesh.state_dir / "pools/local/ganesha/ganesha/ganesha.conf").encode()
    kills, until = 0, time.monotonic() + seconds
    while time.monotonic() < until:
        # Read /proc here rather than start a pgrep each round: on a loaded machine
        # that took long enough for a restarted Ganesha to take its export.
        for proc in Path("/proc").iterdir():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue  # not a process, or gone meanwhile
            if b"ganesha.nfsd" in cmdline.split(b"\0", 1)[0] and config in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), signal.SIGKILL)
                    kills += 1
        await asyncio.sleep(0.01)
    return kills


async def test_a_rule_change_fails_unavailable_once_its_deadline_passes(
    hasty: LocalMesh,
) -> None:
    """Ganesha stays down past the retry deadline: the rule change fails with
    UNAVAILABLE and a reason; the rule is in ERROR, the share itself is not."""
    async with Client(hasty.api_address, "alpha-key") as alpha:
        share = await create_share(alpha, "alpha", "down-too-long")
        killer = asyncio.create_task(_keep_killing_ganesha(hasty, 10))
        try:
            await asyncio.sleep(0.5)
            op = await alpha.call(
                alpha.shares.CreateAccessRule,
                ss.CreateAccessRuleRequest(
                    parent=share.name,
                    access_rule=AccessRule(access_to="127.0.0.1", access_level=RW),
                ),
            )
            with pytest.raises(OperationFailed) as failed:
                await alpha.wait(op, AccessRule, timeout=60)
        finally:
            assert await killer > 0
        assert failed.value.code == grpc.StatusCode.UNAVAILABLE
        assert "gave up" in failed.value.operation.error.message
        rules = await alpha.call(
            alpha.shares.ListAccessRules, ss.ListAccessRulesRequest(parent=share.name)
        )
        (rule,) = rules.access_rules
        assert rule.state == AccessRule.ERROR and "gave up" in rule.state_message
        now = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=share.name))
        assert now.state == Share.ACTIVE
        await delete_share(alpha, share.name)


async def test_a_create_fails_unavailable_once_its_deadline_passes(hasty: LocalMesh) -> None:
    """A backend that stays away past the retry deadline: the waiting create fails with
    UNAVAILABLE and a reason, and the share is left in ERROR to be deleted."""
    async with Client(hasty.api_address, "alpha-key") as alpha:
        frozen = hasty.children[DRIVER_HOST].pid
        assert frozen
        os.kill(frozen, signal.SIGSTOP)
        try:
            async with asyncio.timeout(3 * LEASE_TTL):
                while await _registered(hasty):
                    await asyncio.sleep(0.2)
            op = await alpha.call(
                alpha.shares.CreateShare,
                ss.CreateShareRequest(
                    parent="projects/alpha", share_id="too-late", share=Share(size_gib=1)
                ),
            )
            with pytest.raises(OperationFailed) as failed:
                await alpha.wait(op, Share, timeout=60)
        finally:
            os.kill(frozen, signal.SIGCONT)
        assert failed.value.code == grpc.StatusCode.UNAVAILABLE
        share = await alpha.call(
            alpha.shares.GetShare, ss.GetShareRequest(name="projects/alpha/shares/too-late")
        )
        assert share.state == Share.ERROR and "came back" in share.state_message
        await _persist(lambda: delete_share(alpha, share.name))


async def test_the_scheduler_fills_in_the_zone_it_chose(mesh: LocalMesh, alpha: Client) -> None:
    try:
        share = await create_share(alpha, "alpha", "zoned")
        assert share.availability_zone == ZONE
        again = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=share.name))
        assert again.availability_zone == ZONE
    finally:
        await _delete_all(alpha, mesh)


def _hold_port(port: int) -> socket.socket:
    """Listens on `port`, so that an etcd started there fails: it stays dead."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    deadline = time.monotonic() + 5
    while True:
        try:
            holder.bind(("127.0.0.1", port))
            holder.listen()
            return holder
        except OSError:
            if time.monotonic() > deadline:
                holder.close()
                raise
            time.sleep(0.01)


async def test_a_mesh_stopped_while_etcd_is_dead_leaves_the_host_clean(tmp_path: Path) -> None:
    """etcd dies and cannot come back; the driver-host loses its lease and cannot start
    again. Stopping the launcher still stops Ganesha and its D-Bus daemon and releases
    every mount and loop device."""
    ensure_rpcbind()
    state = tmp_path / "state"
    config = tmp_path / "mesh.toml"
    config.write_text(CONFIG.format(zone=ZONE, deadline=180))
    holder: socket.socket | None = None
    try:
        async with LocalMesh(state, config, api_port=0, lease_ttl_seconds=LEASE_TTL) as mesh:
            async with Client(mesh.api_address, "alpha-key") as alpha:
                share = await create_share(alpha, "alpha", "left-behind")
                await grant(alpha, share.name, "127.0.0.1", RW)
            assert _ganesha_pid(mesh) is not None and mounts_under(state)
            assert mesh.etcd is not None and mesh.etcd.pid and mesh.etcd.client_port
            driver_host = mesh.children[DRIVER_HOST].pid
            assert driver_host
            os.kill(mesh.etcd.pid, signal.SIGKILL)
            holder = _hold_port(mesh.etcd.client_port)
            # It finds its lease lost within a TTL, then gives up on revoking it.
            async with asyncio.timeout(30):
                while pid_alive(driver_host):  # it lost its lease and exited
                    await asyncio.sleep(0.2)
            assert _ganesha_pid(mesh) is not None  # left serving for its next incarnation
        assert_host_clean(state)
    finally:
        if holder is not None:
            holder.close()
