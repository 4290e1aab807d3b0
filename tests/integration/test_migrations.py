"""Schema versions and migrations against a real etcd: the Store stamps and checks the
version of every record; the first migration (v1 -> v2) writes the index keys of the
shares placed before the per-backend index, fenced by the leader, once, and in pages;
the second (-> v3) has each project's usage record count its shares, from an old
mesh's etcd (tests/fixtures/upgrade-v1.json)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from google.protobuf import empty_pb2
from google.protobuf.message import Message
from share_records import share_in

from sharemesh.runtime import migrations, quota
from sharemesh.runtime.config import QuotaConfig
from sharemesh.runtime.coordination import Election, Session, Store, Versioned, keys
from sharemesh.runtime.coordination import _client as etcd
from sharemesh.runtime.coordination._store import schema_version
from sharemesh.runtime.errors import FailedPrecondition, FencedOut
from sharemesh.runtime.lifecycle.share import public
from sharemesh.runtime.migrations import _runner
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_pb2

TTL = 2
ShareRecord = records_pb2.ShareRecord
LegacyShareRecord = records_pb2.LegacyShareRecord
FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "upgrade-v1.json"


def v1_share(name: str, backend: str = "", network: str = "", host: str = "") -> LegacyShareRecord:
    """A share as the code before schema versions wrote it (no version field): ACTIVE
    if placed, else waiting for placement."""
    state = share_pb2.Share.ACTIVE if backend else share_pb2.Share.CREATING
    return LegacyShareRecord(
        share=share_pb2.Share(name=name, size_gib=1, share_network=network, state=state),
        project=name.split("/")[1],
        realized_size_gib=1 if backend else 0,
        backend=f"backends/{backend}" if backend else "",
        pool=f"backends/{backend}/pools/default" if backend else "",
        host=host,
    )


def by_name_labels(found: list[Versioned[ShareRecord]]) -> dict[str, dict[str, str]]:
    return {s.value.spec.share.name: dict(s.value.spec.share.labels) for s in found}


async def put_raw(store: Store, key: str, record: Message) -> None:
    """Written as old code writes: bytes straight to etcd, not through the Store."""
    await etcd.txn(store.client, [], [etcd.op_put(key, record.SerializeToString())])


async def raw(store: Store, key: str) -> tuple[bytes, int, int] | None:
    """A key's bytes, mod revision and etcd version (how many times it was written)."""
    kv, _ = await etcd.get_kv(store.client, key)
    return None if kv is None else (kv.value, kv.mod_revision, kv.version)


async def stored(store: Store, key: str) -> tuple[bytes, int, int]:
    found = await raw(store, key)
    assert found is not None, f"{key} is missing"
    return found


async def test_the_store_stamps_versions_and_refuses_newer_records(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    new = store.key_of("projects/p/shares/new")
    await store.create(new, share_in("projects/p/shares/new"))
    assert ShareRecord.FromString((await stored(store, new))[0]).schema_version == 4
    rule = store.key_of("projects/p/shares/new/accessRules/r")
    await store.create(rule, records_pb2.AccessRuleRecord())
    stored_rule = (await stored(store, rule))[0]
    assert records_pb2.AccessRuleRecord.FromString(stored_rule).schema_version == 1

    # An old record reads as version 1, in today's layout whatever its own (see
    # test_share_layout_migration)...
    old = store.key_of("projects/p/shares/old")
    await put_raw(store, old, v1_share("projects/p/shares/old", "local"))
    found = await store.get(old, ShareRecord)
    assert found is not None and found.value.schema_version == 1
    assert public(found.value).state == share_pb2.Share.ACTIVE
    assert found.value.placement.pool == "backends/local/pools/default"
    found.value.spec.share.labels["by"] = "today's api"
    await store.update(old, found.value, found.mod_revision)
    found = await store.get(old, ShareRecord)
    assert found is not None and found.value.spec.share.labels["by"] == "today's api"
    # ...and is written back at the version of that layout, 4: an older process refuses
    # it rather than read it in the layout it knows. (What versions 2 and 3 would have
    # added, the migration adds whatever the version: see the next test.)
    assert ShareRecord.FromString((await stored(store, old))[0]).schema_version == 4
    rule = store.key_of("projects/p/shares/old/accessRules/r")
    await put_raw(store, rule, records_pb2.AccessRuleRecord())
    found_rule = await store.get(rule, records_pb2.AccessRuleRecord)
    assert found_rule is not None
    await store.update(rule, found_rule.value, found_rule.mod_revision)
    stored_rule = (await stored(store, rule))[0]
    assert records_pb2.AccessRuleRecord.FromString(stored_rule).schema_version == 1, (
        "a record keeps its version when rewritten: only a migration raises it"
    )

    # A record from a newer sharemesh: refused on every read path, never rewritten.
    newer = store.key_of("projects/p/shares/newer")
    record = v1_share("projects/p/shares/newer", "local")
    record.schema_version = 99
    await put_raw(store, newer, record)
    before = await raw(store, newer)
    with pytest.raises(FailedPrecondition) as refused:
        await store.get(newer, ShareRecord)
    assert "newer sharemesh" in refused.value.message and "99" in refused.value.message
    assert etcd_root not in refused.value.message  # the key is metadata, for the operator
    with pytest.raises(FailedPrecondition):
        await store.list_all(store.prefix_of("projects/p", "shares"), ShareRecord)
    assert await raw(store, newer) == before


async def test_v1_shares_get_their_index_keys_once_fenced_and_in_pages(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    flat = [f"projects/p{i % 3}/shares/s{i:03d}" for i in range(95)]  # 3 pages
    for name in flat:
        await put_raw(store, store.key_of(name), v1_share(name, "local"))
    networked = "projects/p0/shares/on-net"
    net = "projects/p0/shareNetworks/n1"
    await put_raw(store, store.key_of(networked), v1_share(networked, "local", net, "host-a"))
    unplaced = "projects/p1/shares/waiting"
    await put_raw(store, store.key_of(unplaced), v1_share(unplaced))
    # Placed by today's scheduler before the migration ran: its index is there already.
    indexed = "projects/p2/shares/indexed"
    await put_raw(store, store.key_of(indexed), v1_share(indexed, "local"))
    await store.put(keys.backend_index_key(etcd_root, "local", indexed), empty_pb2.Empty())
    # Changed by today's api before the migration ran: written at 4, without its keys.
    relabelled = "projects/p2/shares/relabelled"
    await put_raw(store, store.key_of(relabelled), v1_share(relabelled, "local"))
    found = await store.get(store.key_of(relabelled), ShareRecord)
    assert found is not None
    found.value.spec.share.labels["by"] = "today's api"
    await store.update(found.key, found.value, found.mod_revision)

    async with Session(etcd_client, TTL) as session:
        leader = await Election(session, keys.election_prefix(etcd_root, "scheduler")).campaign(
            b"me"
        )
        assert await migrations.run(store, leader) == migrations.SCHEMA == 4

        for name in [*flat, indexed, relabelled]:
            assert await raw(store, keys.backend_index_key(etcd_root, "local", name))
        assert await raw(store, keys.backend_index_key(etcd_root, "local", networked, net))
        assert await raw(store, keys.host_index_key(etcd_root, "host-a", net, networked))
        every = await store.scan(store.root + "shares/", ShareRecord)
        assert len(every) == 99
        assert {s.value.schema_version for s in every} == {4}
        assert not await raw(store, keys.backend_index_key(etcd_root, "local", unplaced, ""))
        # Each share was rewritten exactly once (etcd's per-key version: put, migration),
        # in today's layout at once: the layout step had nothing left to do.
        old = [s for s in every if s.value.spec.share.name != relabelled]
        assert {(await stored(store, s.key))[2] for s in old} == {2}
        assert by_name_labels(every)[relabelled] == {"by": "today's api"}
        # ...and reads as it did, in the spec/status layout.
        by_name = {s.value.spec.share.name: s.value for s in every}
        assert public(by_name[networked]).state == share_pb2.Share.ACTIVE
        assert by_name[networked].status.host == "host-a"
        assert by_name[networked].placement.pool == "backends/local/pools/default"
        assert public(by_name[unplaced]).state == share_pb2.Share.CREATING
        schema = await store.get(migrations.schema_key(store), records_pb2.SchemaRecord)
        assert schema is not None
        assert (schema.value.version, schema.value.resume_after, schema.value.migrated) == (
            4,
            "",
            99,  # indexed (and laid out anew); no usage record to count
        )

        # Again (a new leader, a restart): nothing left to do, nothing written.
        revision = (await etcd.get_kv(etcd_client, etcd_root))[1]
        assert await migrations.run(store, leader) == 4
        assert (await etcd.get_kv(etcd_client, etcd_root))[1] == revision


async def test_usage_records_count_their_shares_once(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    # The old mesh's etcd: alpha has two shares placed (3 GiB), beta one; none counted.
    old_mesh = json.loads(FIXTURE.read_text())["keys"]
    ops = [
        etcd.op_put(etcd_root + key.removeprefix("/sharemesh/"), base64.b64decode(value))
        for key, value in old_mesh.items()
    ]
    await etcd.txn(etcd_client, [], ops)
    # Beside them, alpha's shares that hold no place: one waiting to be placed, one whose
    # create was undone on its pool (its GiB given back); they are not counted.
    await put_raw(
        store,
        store.key_of("projects/alpha/shares/waiting"),
        v1_share("projects/alpha/shares/waiting"),
    )
    undone = v1_share("projects/alpha/shares/undone", "local")  # allocated_gib 0
    await put_raw(store, store.key_of(undone.share.name), undone)
    usage_keys = [keys.usage_key(etcd_root, p) for p in ("alpha", "beta")]
    for key in usage_keys:
        found = await store.get(key, records_pb2.ProjectUsage)
        assert found is not None and found.value.schema_version == 1
    # Before the migration, the quota counts them from the shares (the fallback).
    assert [(await quota.usage(store, p)).shares for p in ("alpha", "beta")] == [2, 1]

    async with Session(etcd_client, TTL) as session:
        leader = await Election(session, keys.election_prefix(etcd_root, "scheduler")).campaign(
            b"me"
        )
        assert await migrations.run(store, leader) == 4

        for key, (shares, gib) in zip(usage_keys, [(2, 3), (1, 1)]):
            found = await store.get(key, records_pb2.ProjectUsage)
            assert found is not None
            assert (found.value.shares, found.value.share_gib) == (shares, gib)
            assert found.value.schema_version == 3
            assert (await stored(store, key))[2] == 2  # the old mesh's write, then this one
        schema = await store.get(migrations.schema_key(store), records_pb2.SchemaRecord)
        # shares indexed (and laid out anew), then usage counted
        assert schema is not None and schema.value.migrated == 5 + 2

        # From now on the record is the count: a share placed and one given back move
        # it in the transactions that move the GiB, and the shares are not read.
        txn = store.txn()
        await quota.reserve_share(store, txn, QuotaConfig(project_shares={"alpha": 3}), "alpha", 1)
        await txn.commit()
        txn = store.txn()
        await quota.adjust(store, txn, "beta", -1, shares=-1)
        await txn.commit()
        shares = store.prefix_of("projects/alpha", "shares")
        await etcd.txn(etcd_client, [], [etcd.op_delete(shares, etcd.prefix_end(shares))])
        alpha, beta = [await quota.usage(store, p) for p in ("alpha", "beta")]
        assert (alpha.shares, alpha.share_gib, beta.shares, beta.share_gib) == (3, 4, 0, 0)

        # Again: nothing left to do, nothing written.
        revision = (await etcd.get_kv(etcd_client, etcd_root))[1]
        assert await migrations.run(store, leader) == 4
        assert (await etcd.get_kv(etcd_client, etcd_root))[1] == revision


async def test_a_leader_that_lost_leadership_writes_nothing(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    name = "projects/p/shares/s"
    await put_raw(store, store.key_of(name), v1_share(name, "local"))
    prefix = keys.election_prefix(etcd_root, "scheduler")
    async with Session(etcd_client, TTL) as old, Session(etcd_client, TTL) as new:
        stale = await Election(old, prefix).campaign(b"old")
        await old.close()  # its lease is gone: another may lead now
        await Election(new, prefix).campaign(b"new")
        with pytest.raises(FencedOut):
            await migrations.run(store, stale)
    assert (await stored(store, store.key_of(name)))[2] == 1
    assert not await raw(store, keys.backend_index_key(etcd_root, "local", name))
    assert await raw(store, migrations.schema_key(store)) is None


async def test_a_mesh_newer_than_the_code_is_left_alone(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    await put_raw(store, store.key_of("projects/p/shares/s"), v1_share("projects/p/shares/s", "x"))
    await store.put(migrations.schema_key(store), records_pb2.SchemaRecord(version=7))
    async with Session(etcd_client, TTL) as session:
        leader = await Election(session, keys.election_prefix(etcd_root, "s")).campaign(b"me")
        assert await migrations.run(store, leader) == 7
    assert not await raw(store, keys.backend_index_key(etcd_root, "x", "projects/p/shares/s"))
    assert await migrations.mesh_version(store) == 7
    await migrations.wait_for(store, 2)  # a service of this code need not wait


def test_the_store_writes_the_version_the_last_migration_brings() -> None:
    last: dict[type, int] = {}
    for step in migrations.STEPS:
        last[step.record_type] = step.version
    for record_type, version in last.items():
        assert schema_version(record_type) == version


def test_the_page_fits_in_one_etcd_transaction() -> None:
    # A page writes a record and up to two index keys per share, plus the schema:
    # etcd's default --max-txn-ops is 128.
    assert 3 * _runner.PAGE + 1 <= 128
