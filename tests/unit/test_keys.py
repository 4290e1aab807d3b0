import pytest

from sharemesh.runtime.coordination import keys
from sharemesh.runtime.errors import InvalidArgument

R = "/sharemesh/"


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("projects/p1/shares/s1", "/sharemesh/shares/projects/p1/shares/s1"),
        (
            "projects/p1/shares/s1/accessRules/r1",
            "/sharemesh/accessRules/projects/p1/shares/s1/accessRules/r1",
        ),
        ("shareTypes/x", "/sharemesh/shareTypes/shareTypes/x"),
        ("projects/p/operations/op1", "/sharemesh/operations/projects/p/operations/op1"),
    ],
)
def test_key_of_and_back(name: str, key: str) -> None:
    assert keys.key_of(R, name) == key
    assert keys.name_of(R, key) == name
    assert keys.name_of(R, key.encode()) == name


def test_prefix_of() -> None:
    assert keys.prefix_of(R, "projects/p1", "shares") == "/sharemesh/shares/projects/p1/shares/"
    assert keys.prefix_of(R, "", "shareTypes") == "/sharemesh/shareTypes/shareTypes/"
    assert keys.key_of(R, "projects/p1/shares/s1").startswith(
        keys.prefix_of(R, "projects/p1", "shares")
    )


def test_nested_collection_not_in_parent_range() -> None:
    shares = keys.prefix_of(R, "projects/p1", "shares")
    rule = keys.key_of(R, "projects/p1/shares/s1/accessRules/r1")
    assert not rule.startswith(shares)
    assert rule.startswith(keys.prefix_of(R, "projects/p1/shares/s1", "accessRules"))
    # Another project's shares are another range, even with a common id prefix.
    assert not keys.key_of(R, "projects/p10/shares/s1").startswith(shares)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "projects",
        "projects/",
        "projects//shares/s1",
        "projects/p1/shares",
        "projects/p1/shares/",
        "Projects/p1",
        "projects/./shares/s1",
        "projects/../x",
        "projects/p\x00/shares/s1",
        "projects/p\n1",
        "1projects/p",
        "pro-jects/p",
    ],
)
def test_bad_names_rejected(name: str) -> None:
    with pytest.raises(InvalidArgument):
        keys.key_of(R, name)


@pytest.mark.parametrize("root", ["sharemesh/", "/sharemesh", "//", "/a//b/", ""])
def test_bad_roots_rejected(root: str) -> None:
    with pytest.raises(InvalidArgument):
        keys.key_of(root, "projects/p1")


def test_root_slash_alone_is_allowed() -> None:
    assert keys.key_of("/", "projects/p1") == "/projects/projects/p1"


@pytest.mark.parametrize(
    "key",
    [
        "/other/shares/projects/p1/shares/s1",
        "/sharemesh/shares",
        "/sharemesh/volumes/projects/p1/shares/s1",
        "/sharemesh/shares/projects/p1",
        "/sharemesh/registry/backends/b1",
    ],
)
def test_name_of_rejects_foreign_keys(key: str) -> None:
    with pytest.raises(InvalidArgument):
        keys.name_of(R, key)


def test_internal_keys() -> None:
    assert keys.backend_key(R, "lvm1") == "/sharemesh/registry/backends/lvm1"
    assert keys.backend_key(R, "lvm1").startswith(keys.backends_prefix(R))
    assert keys.host_key(R, "h1") == "/sharemesh/registry/hosts/h1"
    assert keys.host_key(R, "h1").startswith(keys.hosts_prefix(R))
    assert keys.allocation_key(R, "lvm1", "pool-a") == "/sharemesh/allocations/lvm1/pool-a"
    assert keys.allocation_key(R, "lvm1", "pool-a").startswith(keys.allocations_prefix(R, "lvm1"))
    assert keys.election_prefix(R, "scheduler") == "/sharemesh/elections/scheduler"
    assert keys.lock_prefix(R, "gc") == "/sharemesh/locks/gc"
    assert keys.lock_prefix(R, "projects/p/shares/s1") == "/sharemesh/locks/projects/p/shares/s1"
    assert keys.request_id_key(R, "p1", "req-1") == "/sharemesh/requestIds/p1/req-1"
    assert keys.request_id_key(R, "p1", "req-1").startswith(keys.request_ids_prefix(R, "p1"))


@pytest.mark.parametrize(
    "call",
    [
        lambda: keys.backend_key(R, "a/b"),
        lambda: keys.backend_key(R, ""),
        lambda: keys.host_key(R, ".."),
        lambda: keys.allocation_key(R, "b", "p/../../x"),
        lambda: keys.election_prefix(R, ""),
        lambda: keys.lock_prefix(R, "projects/p/shares"),
        lambda: keys.request_id_key(R, "p1", "a/b"),
        lambda: keys.prefix_of(R, "projects/p1", "Shares"),
        lambda: keys.prefix_of(R, "projects", "shares"),
    ],
)
def test_internal_keys_reject_injection(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument):
        call()


def test_collection_and_parent() -> None:
    assert keys.collection_of("projects/p1/shares/s1") == "shares"
    assert keys.parent_of("projects/p1/shares/s1") == "projects/p1"
    assert keys.parent_of("shareTypes/x") == ""


def test_pool_allocation_keys_round_trip():
    key = keys.pool_allocation_key(R, "backends/lvm1/pools/pool-a")
    assert key == keys.allocation_key(R, "lvm1", "pool-a")
    assert keys.pool_of_allocation_key(R, key) == "backends/lvm1/pools/pool-a"
    with pytest.raises(InvalidArgument):
        keys.pool_allocation_key(R, "backends/lvm1/pool-a")
