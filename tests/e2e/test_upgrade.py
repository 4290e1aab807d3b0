"""An upgrade: today's mesh started on the etcd of a mesh run by the code before the
per-backend index (tests/fixtures/upgrade-v1.json, made by scripts/gen-upgrade-fixture),
plus 2,000 synthetic shares of that age on a backend that has left.

The scheduler's leader migrates them to schema 2 and is killed -9 half-way; the other
scheduler finishes, each record written exactly once, and goes on to schema 3 (each
project's usage record counts its shares). The old shares are then served:
the api lists and gets them, their driver-host finds them through the index and tries
to export them again (their images are not on this host: it reports that and changes
nothing), one is deleted through the api. A new share beside them carries NFS I/O. A
record newer than the code is refused with FAILED_PRECONDITION and left as it is."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from sharemesh.client import Client
from sharemesh.launcher import LocalMesh
from sharemesh.launcher.etcd_server import EtcdServer
from sharemesh.runtime import migrations
from sharemesh.runtime.coordination import Store, connect, keys, leader
from sharemesh.runtime.coordination import _client as etcd
from sharemesh.runtime.errors import Unavailable
from sharemesh.runtime.lifecycle.share import public
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_pb2
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import MESH_CONFIG, create_share, delete_share, grant, read, refused, write
from support import assert_host_clean, ensure_rpcbind

pytestmark = pytest.mark.e2e

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "upgrade-v1.json"
OLD_SHARES = ["projects/alpha/shares/plain", "projects/alpha/shares/ruled"]
OLD_BETA = "projects/beta/shares/other"
SYNTHETIC = 2000
ROOT = "/sharemesh/"


def _synthetic(i: int) -> tuple[str, bytes]:
    """A share placed, before versions and the index, on a backend since retired."""
    name = f"projects/bulk{i % 7}/shares/s{i:05d}"
    record = records_pb2.LegacyShareRecord(
        share=share_pb2.Share(name=name, size_gib=1, state=share_pb2.Share.ACTIVE),
        project=f"bulk{i % 7}",
        backend="backends/retired",
        pool="backends/retired/pools/default",
        allocated_gib=1,
        realized_size_gib=1,
    )
    return f"{ROOT}shares/{name}", record.SerializeToString()


async def _load(state: Path) -> None:
    """The old mesh's etcd, as the launcher will find it: its data dir and ports."""
    ports = {"etcd_client": 0, "etcd_peer": 0}
    server = EtcdServer(state / "etcd")
    await server.start()
    try:
        assert server.client_port and server.peer_port
        ports = {"etcd_client": server.client_port, "etcd_peer": server.peer_port}
        stored = json.loads(FIXTURE.read_text())["keys"]
        puts = [(key, base64.b64decode(value)) for key, value in stored.items()]
        puts += [_synthetic(i) for i in range(SYNTHETIC)]
        async with connect(server.endpoint) as client:
            for start in range(0, len(puts), 100):
                ops = [etcd.op_put(k, v) for k, v in puts[start : start + 100]]
                await etcd.txn(client, [], ops)
    finally:
        await server.stop()
    (state / "ports.json").write_text(json.dumps(ports))


async def _schema(client: object) -> records_pb2.SchemaRecord:
    kv, _ = await etcd.get_kv(client, f"{ROOT}schema")  # type: ignore[arg-type]
    return records_pb2.SchemaRecord.FromString(kv.value) if kv else records_pb2.SchemaRecord()


async def _kill_leader_mid_migration(mesh: LocalMesh, state: Path) -> dict[str, object]:
    """Waits for the migration to have committed a page, freezes both schedulers, and
    kills -9 the one leading while the migration is still half-way."""
    endpoint = _etcd_endpoint(state)
    async with connect(endpoint, identity=mesh.identity("operator")) as client:
        while True:
            try:
                schema = await _schema(client)
            except Unavailable:  # the launcher is starting etcd
                await asyncio.sleep(0.05)
                continue
            if schema.resume_after:
                break
            assert schema.version < 2, "the migration finished before it could be stopped"
            await asyncio.sleep(0.005)
        schedulers = {n: c for n, c in mesh.children.items() if n.startswith("scheduler")}
        pids = {n: c.pid or 0 for n, c in schedulers.items()}
        assert all(pids.values())
        for pid in pids.values():
            os.kill(pid, signal.SIGSTOP)
        halfway = await _schema(client)
        owner = await leader(client, keys.election_prefix(ROOT, "scheduler"))
        assert owner is not None
        leading = next(n for n, a in mesh.addresses().items() if a.encode() == owner)
        os.kill(pids[leading], signal.SIGKILL)
        for name, pid in pids.items():
            if name != leading:
                os.kill(pid, signal.SIGCONT)
    return {"halfway": halfway, "killed": leading}


def _etcd_endpoint(state: Path) -> str:
    ports = json.loads((state / "ports.json").read_text())
    return f"https://127.0.0.1:{ports['etcd_client']}"  # mutual TLS, as the launcher runs it


@pytest.fixture(scope="module")
async def upgraded(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[LocalMesh, dict[str, object]]]:
    ensure_rpcbind()
    state = tmp_path_factory.mktemp("mesh")
    (state / "mesh.toml").write_text(MESH_CONFIG.format(capacity_gib=8))
    await _load(state)
    mesh = LocalMesh(state, state / "mesh.toml", api_port=0, lease_ttl_seconds=3, schedulers=2)
    starting = asyncio.ensure_future(mesh.start())
    try:
        killed = await asyncio.wait_for(_kill_leader_mid_migration(mesh, state), 120)
        await asyncio.wait_for(starting, 120)
        yield mesh, killed
    finally:
        starting.cancel()
        with contextlib.suppress(BaseException):
            await starting
        await mesh.stop()
    assert_host_clean(state)


@pytest.fixture(scope="module")
async def store(upgraded: tuple[LocalMesh, dict[str, object]]) -> AsyncIterator[Store]:
    mesh, _ = upgraded
    assert mesh.etcd is not None
    async with connect(mesh.etcd.endpoint) as client:
        yield Store(client)


@pytest.fixture(scope="module")
async def alpha(upgraded: tuple[LocalMesh, dict[str, object]]) -> AsyncIterator[Client]:
    async with Client(upgraded[0].api_address, "alpha-key") as client:
        yield client


async def _until(check: object, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.2)


async def test_the_migration_survives_its_leader_and_runs_exactly_once(
    upgraded: tuple[LocalMesh, dict[str, object]], store: Store
) -> None:
    mesh, killed = upgraded
    halfway = killed["halfway"]
    assert isinstance(halfway, records_pb2.SchemaRecord)
    assert halfway.version < 2 and 0 < halfway.migrated < SYNTHETIC + 3

    async def done() -> bool:
        return await migrations.mesh_version(store) == migrations.SCHEMA == 4

    await _until(done)
    schema = await _schema(store.client)
    # Every share of the old mesh, once (indexed, and written in today's layout, so
    # schema 4's step finds nothing left), then its two usage records: the count is
    # kept in the pages' transactions.
    assert (schema.migrated, schema.resume_after) == (SYNTHETIC + 3 + 2, "")
    for project, shares in (("alpha", 2), ("beta", 1)):
        usage = await store.get(keys.usage_key(ROOT, project), records_pb2.ProjectUsage)
        assert usage is not None
        assert (usage.value.shares, usage.value.schema_version) == (shares, 3)
    shares = await store.scan(f"{ROOT}shares/", records_pb2.ShareRecord)
    assert len(shares) == SYNTHETIC + 3
    assert {s.value.schema_version for s in shares} == {4}
    assert {public(s.value).state for s in shares} == {share_pb2.Share.ACTIVE}
    response = await etcd.range_(
        store.client, etcd.range_request(f"{ROOT}shares/", etcd.prefix_end(f"{ROOT}shares/"))
    )
    # etcd's version of a key counts its writes: the old mesh's last, then the migration.
    bulk = [kv for kv in response.kvs if b"/bulk" in kv.key]
    assert len(bulk) == SYNTHETIC and {kv.version for kv in bulk} == {2}
    index = await store.scan(keys.backend_index_prefix(ROOT, "retired"), records_pb2.PoolAllocation)
    assert len(index) == SYNTHETIC
    # Two leaders took part: the killed one and the one that resumed after its last page.
    logs = {n: (mesh.state_dir / "logs" / f"{n}.log").read_text() for n in mesh.children}
    resumed = [n for n, text in logs.items() if "resuming after" in text]
    assert resumed and killed["killed"] in logs
    finished = [line for text in logs.values() for line in text.splitlines()]
    assert sum("the mesh is at schema 2" in line for line in finished) == 1
    assert sum("the mesh is at schema 4" in line for line in finished) == 1


async def test_old_shares_are_indexed_listed_and_got(alpha: Client, store: Store) -> None:
    for name in [*OLD_SHARES, OLD_BETA]:
        assert await store.get(
            keys.backend_index_key(ROOT, "local", name), records_pb2.PoolAllocation
        )
    listed = await alpha.call(
        alpha.shares.ListShares, ss.ListSharesRequest(parent="projects/alpha")
    )
    assert sorted(s.name for s in listed.shares) == OLD_SHARES
    for name in OLD_SHARES:
        share = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=name))
        assert share.state == share_pb2.Share.ACTIVE
    rules = await alpha.call(
        alpha.shares.ListAccessRules, ss.ListAccessRulesRequest(parent=OLD_SHARES[1])
    )
    assert [r.access_to for r in rules.access_rules] == ["192.0.2.0/24"]


async def test_their_driver_host_finds_them_and_keeps_them_safe(
    upgraded: tuple[LocalMesh, dict[str, object]], alpha: Client, store: Store
) -> None:
    mesh, _ = upgraded
    # A driver-host that starts on the migrated mesh lists its shares through the index
    # and exports each again; the images are not on this host, so it says so and
    # creates nothing in their place (an empty share would hide the loss).
    child = mesh.children["driver-host-local"]
    log = mesh.state_dir / "logs" / "driver-host-local.log"
    before = log.read_text().count("registered backends/local")
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)

    async def registered_again() -> bool:
        return log.read_text().count("registered backends/local") > before

    await _until(registered_again)
    text = log.read_text()
    for name in [*OLD_SHARES, OLD_BETA]:
        assert f"could not re-export {name}" in text
    pool = mesh.state_dir / "pools" / "local"
    assert not [p for p in pool.rglob("*.img") if p.stem in {"plain", "ruled", "other"}]
    for name in OLD_SHARES:
        share = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=name))
        assert share.state == share_pb2.Share.ACTIVE  # the record is left for the operator
    # The driver-host serves it: a delete goes through and takes its index key along.
    await delete_share(alpha, OLD_SHARES[0])
    assert await store.get(store.key_of(OLD_SHARES[0]), records_pb2.ShareRecord) is None
    assert not await store.get(
        keys.backend_index_key(ROOT, "local", OLD_SHARES[0]), records_pb2.PoolAllocation
    )


async def test_a_new_share_beside_them_serves_nfs(alpha: Client, tmp_path: Path) -> None:
    share = await create_share(alpha, "alpha", "after-upgrade")
    await grant(alpha, share.name, "127.0.0.1")
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(1 << 20))
    code, out = await write(share, payload, "data.bin")
    assert code == 0, out
    back = tmp_path / "back"
    code, out = await read(share, back, "data.bin")
    assert code == 0, out
    assert back.read_bytes() == payload.read_bytes()
    await delete_share(alpha, share.name)


async def test_a_record_newer_than_the_code_is_refused_and_left_alone(
    alpha: Client, store: Store
) -> None:
    name = "projects/alpha/shares/from-the-future"
    record = records_pb2.ShareRecord(project="alpha", schema_version=99)
    record.spec.share.name, record.spec.share.size_gib = name, 1
    key = store.key_of(name)
    await etcd.txn(store.client, [], [etcd.op_put(key, record.SerializeToString())])
    before, _ = await etcd.get_kv(store.client, key)
    try:
        for call in (
            alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=name)),
            alpha.call(alpha.shares.DeleteShare, ss.DeleteShareRequest(name=name)),
            alpha.call(alpha.shares.ListShares, ss.ListSharesRequest(parent="projects/alpha")),
        ):
            error = await refused(call, grpc.StatusCode.FAILED_PRECONDITION)
            assert "newer sharemesh" in (error.details() or "")
            assert ROOT not in (error.details() or "")  # no etcd key for the tenant
        after, _ = await etcd.get_kv(store.client, key)
        assert after is not None and before is not None
        assert (after.value, after.mod_revision) == (before.value, before.mod_revision)
    finally:
        await etcd.txn(store.client, [], [etcd.op_delete(key)])
