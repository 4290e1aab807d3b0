"""The watch cache's pure parts: key order, pages, applying changes, the share indexes,
and what a page token's revision means to it."""

from __future__ import annotations

import random

import pytest
from share_records import share_in

from sharemesh.api._cache import Entry, Snapshot, decode
from sharemesh.runtime.errors import Internal
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_pb2

ROOT = "/m/"
PREFIX = f"{ROOT}shares/projects/p/shares/"


def share(
    name: str,
    *,
    network: str = "",
    share_type: str = "",
    size: int = 1,
    state: int = share_pb2.Share.CREATING,
    allocated: int = 0,
    project: str = "p",
) -> Entry:
    record = share_in(
        f"projects/{project}/shares/{name}",
        state,
        size_gib=size,
        placed_on="backends/b/pools/p" if allocated else "",
        share_network=network,
        share_type=share_type,
    )
    assert record.allocated_gib == allocated
    return Entry(record.SerializeToString(), 7, 7)


def key(name: str, project: str = "p") -> str:
    return f"{ROOT}shares/projects/{project}/shares/{name}"


def ids(snapshot: Snapshot, after: str = "", limit: int = 50) -> tuple[list[str], bool]:
    found, more = snapshot.page(PREFIX, after, limit)
    return [k[len(PREFIX) :] for k, _ in found], more


def test_pages_are_in_key_order_whatever_the_order_of_arrival() -> None:
    snapshot = Snapshot(ROOT)
    names = [f"s{i:03d}" for i in range(120)]
    shuffled = names[:]
    random.Random(1).shuffle(shuffled)
    snapshot.reset([(key(n), share(n)) for n in shuffled[:60]], 10)
    for n in shuffled[60:]:
        snapshot.put(key(n), share(n))
    seen: list[str] = []
    after, more = "", True
    while more:
        page, more = ids(snapshot, after, 50)
        seen += page
        after = page[-1]
    assert seen == names


def test_a_page_stays_inside_its_prefix_and_skips_nested_keys() -> None:
    snapshot = Snapshot(ROOT)
    snapshot.put(key("a", "o"), share("a", project="o"))  # another project, before
    snapshot.put(key("a"), share("a"))
    snapshot.put(PREFIX + "a/nested", share("x"))
    snapshot.put(key("b"), share("b"))
    snapshot.put(key("a", "q"), share("a", project="q"))  # another project, after
    assert ids(snapshot) == (["a", "b"], False)
    assert ids(snapshot, limit=1) == (["a"], True)
    assert ids(snapshot, "a", 1) == (["b"], False)
    assert ids(snapshot, "b") == ([], False)


def test_a_page_after_a_deleted_id_starts_at_the_next_one() -> None:
    # A token names the last id returned; it may be gone by the next page.
    snapshot = Snapshot(ROOT)
    for n in "abcd":
        snapshot.put(key(n), share(n))
    snapshot.delete(key("b"))
    snapshot.delete(key("b"))  # deleting what is gone changes nothing
    assert ids(snapshot, "b") == (["c", "d"], False)
    assert len(snapshot) == 3


def test_an_update_replaces_the_entry_in_place() -> None:
    snapshot = Snapshot(ROOT)
    snapshot.put(key("a"), share("a", size=1))
    snapshot.put(key("a"), Entry(share("a", size=5).value, 9, 7))
    (found,), _ = snapshot.page(PREFIX, "", 10)
    decoded = decode(found[0], found[1], records_pb2.ShareRecord)
    assert (decoded.value.spec.share.size_gib, decoded.mod_revision, decoded.create_revision) == (
        5,
        9,
        7,
    )
    assert len(snapshot) == 1


def test_only_the_listed_collections_are_cached() -> None:
    snapshot = Snapshot(ROOT)
    assert snapshot.cached(key("a"))
    assert snapshot.cached(f"{ROOT}operations/projects/p/operations/o")
    assert not snapshot.cached(f"{ROOT}locks/projects/p/shares/a/1")
    assert not snapshot.cached("/other/shares/projects/p/shares/a")


def test_the_indexes_follow_puts_and_deletes() -> None:
    snapshot = Snapshot(ROOT)
    net = "projects/p/shareNetworks/n"
    snapshot.put(key("a"), share("a", network=net, share_type="shareTypes/gold", size=3))
    snapshot.put(key("b"), share("b", network=net, size=4))
    snapshot.put(key("c"), share("c", size=2, allocated=2, state=share_pb2.Share.ACTIVE))
    assert snapshot.shares_using("share_network", net) == [
        "projects/p/shares/a",
        "projects/p/shares/b",
    ]
    assert snapshot.shares_using("share_type", "shareTypes/gold") == ["projects/p/shares/a"]
    assert snapshot.unplaced_gib("p") == 7
    # a is placed and leaves the network; b goes.
    snapshot.put(key("a"), share("a", share_type="shareTypes/gold", size=3, allocated=3))
    snapshot.delete(key("b"))
    assert snapshot.shares_using("share_network", net) == []
    assert snapshot.shares_using("share_type", "shareTypes/gold") == ["projects/p/shares/a"]
    assert snapshot.unplaced_gib("p") == 0
    snapshot.reset([(key("d"), share("d", network=net, size=6))], 20)
    assert snapshot.shares_using("share_network", net) == ["projects/p/shares/d"]
    assert snapshot.shares_using("share_type", "shareTypes/gold") == []
    assert (snapshot.unplaced_gib("p"), snapshot.revision, len(snapshot)) == (6, 20, 1)


def test_the_revision_only_moves_forward() -> None:
    snapshot = Snapshot(ROOT)
    snapshot.reset([], 10)
    snapshot.advance(12)
    snapshot.advance(11)
    assert snapshot.revision == 12


def test_a_record_that_does_not_parse_is_an_internal_error_when_read() -> None:
    with pytest.raises(Internal):
        decode(key("a"), Entry(b"\xff\xff", 1, 1), records_pb2.ShareRecord)
