import pytest

from sharemesh.runtime import capacity
from sharemesh.runtime.config import SchedulerConfig
from sharemesh.scheduler._compose import placement
from sharemesh.scheduler._placement import Candidate, NoValidPool, Request
from sharemesh.scheduler.filters.capabilities import matches


def pool(name, total, allocated, zone="", **capabilities):
    return Candidate(
        f"backends/b/pools/{name}",
        "backends/b",
        total,
        allocated,
        {k: str(v) for k, v in capabilities.items()},
        zone,
    )


DEFAULT = placement(SchedulerConfig())


def test_spreads_to_the_pool_with_most_room():
    assert DEFAULT.choose(
        [pool("a", 10, 8), pool("b", 10, 2), pool("c", 5, 0)], Request(1)
    ).pool.endswith("/b")


def test_a_negative_capacity_multiplier_stacks():
    stack = placement(SchedulerConfig(weighers={"capacity": -1.0}))
    assert stack.choose([pool("a", 10, 8), pool("b", 10, 2)], Request(1)).pool.endswith("/a")


def test_goodness_can_outweigh_capacity():
    good = placement(SchedulerConfig(weighers={"capacity": 1.0, "goodness": 2.0}))
    chosen = good.choose([pool("a", 10, 0, goodness=10), pool("b", 10, 5, goodness=90)], Request(1))
    assert chosen.pool.endswith("/b")


def test_capacity_filter_is_named_when_nothing_fits():
    with pytest.raises(NoValidPool, match=r"^capacity filter: no pool has 6 GiB"):
        DEFAULT.choose([pool("a", 10, 5), pool("b", 3, 0)], Request(6))


def test_exact_fit_and_reserved_percentage():
    assert DEFAULT.choose([pool("a", 4, 3)], Request(1))
    with pytest.raises(NoValidPool, match="capacity"):
        DEFAULT.choose([pool("a", 10, 8, reserved_percentage=20)], Request(1))


def test_thin_provisioning_allows_the_oversubscription_ratio_and_no_more():
    thin = pool("a", 10, 18, thin_provisioning="true", max_over_subscription_ratio=2.0)
    assert DEFAULT.choose([thin], Request(2))
    with pytest.raises(NoValidPool, match="capacity"):
        DEFAULT.choose([thin], Request(3))
    with pytest.raises(NoValidPool, match="capacity"):  # the type asks for thick
        DEFAULT.choose([thin], Request(1, {"thin_provisioning": "false"}))
    with pytest.raises(NoValidPool, match="capacity"):
        DEFAULT.choose([thin], Request(1, {"thin_provisioning": "<is> False"}))


def test_a_pool_that_cannot_provision_thin_counts_every_share_thick():
    assert not capacity.provisions_thin({}, {})
    assert not capacity.provisions_thin(
        {"thin_provisioning": "true"}, {"thin_provisioning": "False"}
    )
    assert capacity.provisions_thin({"thin_provisioning": "true"}, {})
    thick_only = {"max_over_subscription_ratio": "3", "reserved_percentage": "10"}
    assert capacity.limit_gib(10, thick_only, thin=False) == pytest.approx(9)
    assert capacity.limit_gib(10, thick_only, thin=True) == pytest.approx(27)


def test_retry_skips_tried_pools():
    chosen = DEFAULT.choose(
        [pool("a", 10, 0), pool("b", 5, 0)], Request(1, tried=frozenset({"backends/b/pools/a"}))
    )
    assert chosen.pool.endswith("/b")
    with pytest.raises(NoValidPool, match="^retry filter"):
        DEFAULT.choose([pool("a", 10, 0)], Request(1, tried=frozenset({"backends/b/pools/a"})))


def test_availability_zone_from_share_or_type():
    pools = [pool("a", 10, 0, "az1"), pool("b", 10, 0, "az2")]
    assert DEFAULT.choose(pools, Request(1, availability_zone="az2")).pool.endswith("/b")
    assert DEFAULT.choose(pools, Request(1, {"availability_zones": "az1, az3"})).pool.endswith("/a")
    with pytest.raises(NoValidPool, match="availability_zone filter: .*az9"):
        DEFAULT.choose(pools, Request(1, availability_zone="az9"))


def test_capabilities_filter_matches_type_specs():
    pools = [pool("a", 10, 0, snapshot_support="false"), pool("b", 5, 0, snapshot_support="true")]
    assert DEFAULT.choose(pools, Request(1, {"snapshot_support": "<is> True"})).pool.endswith("/b")
    with pytest.raises(NoValidPool, match="capabilities filter: .*shrink_support"):
        DEFAULT.choose(pools, Request(1, {"shrink_support": "<is> True"}))


@pytest.mark.parametrize(
    "capability, spec, expected",
    [
        ("10", ">= 5", True),
        ("10", ">= 11", False),
        ("3", "<= 3", True),
        ("3", "== 3.0", True),
        ("3", "!= 3", False),
        ("abc", ">= 1", False),
        ("NFS CIFS", "<in> CIFS", True),
        ("NFS", "<in> CIFS", False),
        ("true", "<is> True", True),
        ("False", "<is> True", False),
        ("gold", "<or> silver <or> gold", True),
        ("bronze", "<or> silver <or> gold", False),
        ("NFS", "nfs", True),
        ("NFS", "CIFS", False),
        (None, "<is> False", True),
        (None, "false", True),
        (None, "<is> True", False),
        (None, "gold", False),
    ],
)
def test_extra_spec_operators(capability, spec, expected):
    assert matches(capability, spec) is expected


def test_unknown_filter_names_the_setting():
    from sharemesh.runtime.errors import InvalidArgument

    with pytest.raises(InvalidArgument) as error:
        placement(SchedulerConfig(filters=("capacity", "nope")))
    assert error.value.field_violations[0][0] == "scheduler.filters"


def test_full_pools_of_the_right_kind_are_reported_as_full():
    pools = [pool("gold", 10, 10, tier="gold"), pool("silver", 10, 0, tier="silver")]
    with pytest.raises(NoValidPool, match="^capacity filter"):
        DEFAULT.choose(pools, Request(1, {"tier": "gold"}))
