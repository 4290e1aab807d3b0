import pytest

from sharemesh.scheduler._placement import Candidate, NoValidPool, choose


def pool(name, total, allocated):
    return Candidate(f"backends/b/pools/{name}", "backends/b", total, allocated)


def test_picks_the_pool_with_most_unallocated_capacity():
    assert choose([pool("a", 10, 8), pool("b", 10, 2), pool("c", 5, 0)], 1).pool.endswith("/b")


def test_a_share_that_fits_nowhere_names_the_capacity_filter():
    with pytest.raises(NoValidPool, match=r"capacity filter: no pool has 6 GiB.*5 GiB"):
        choose([pool("a", 10, 5), pool("b", 3, 0)], 6)


def test_exact_fit_is_accepted():
    assert choose([pool("a", 4, 3)], 1).pool.endswith("/a")


def test_tried_pools_are_skipped():
    assert choose(
        [pool("a", 10, 0), pool("b", 5, 0)], 1, tried=["backends/b/pools/a"]
    ).pool.endswith("/b")
    with pytest.raises(NoValidPool, match="every pool has been tried"):
        choose([pool("a", 10, 0)], 1, tried=["backends/b/pools/a"])


def test_no_pools_at_all():
    with pytest.raises(NoValidPool, match="no backend"):
        choose([], 1)
