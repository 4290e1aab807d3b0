"""An etcd endpoint naming one member or the members of a cluster, and the storage
blocks the hosts of a multi-host mesh cut their gateways' legs from."""

from __future__ import annotations

import ipaddress

import pytest

from sharemesh.launcher._fabric import MAX_HOSTS, _storage_block
from sharemesh.network import STORAGE_RANGE, storage_addresses, storage_range
from sharemesh.runtime.coordination._client import _target
from sharemesh.runtime.errors import FailedPrecondition, InvalidArgument


def test_one_member_is_its_host_and_port() -> None:
    assert _target("https://etcd.example:2379").target == "etcd.example:2379"
    assert _target("127.0.0.1:23790").scheme == "http"


def test_members_of_a_cluster_are_tried_in_order_and_named_by_the_first() -> None:
    target = _target("https://100.64.0.2:2379, https://100.64.0.1:2379,https://100.64.0.3:2379")
    assert target.target == "ipv4:100.64.0.2:2379,100.64.0.1:2379,100.64.0.3:2379"
    assert target.authority == "100.64.0.2"


@pytest.mark.parametrize(
    "endpoint",
    [
        "ftp://10.0.0.1:2379",
        "https://10.0.0.1:2379,http://10.0.0.2:2379",  # mixed schemes
        "https://etcd-a:2379,https://etcd-b:2379",  # several need addresses
        "https://",
    ],
)
def test_endpoints_that_name_no_cluster_are_refused(endpoint: str) -> None:
    with pytest.raises(InvalidArgument):
        _target(endpoint)


def test_each_host_has_a_block_of_its_own_in_the_storage_range() -> None:
    blocks = [ipaddress.ip_network(_storage_block(k)) for k in range(1, MAX_HOSTS + 1)]
    assert all(b.subnet_of(STORAGE_RANGE) for b in blocks)
    assert not any(a.overlaps(b) for i, a in enumerate(blocks) for b in blocks[i + 1 :])
    # The first block stays for what runs outside the simulated hosts (share servers).
    assert not any(b.overlaps(ipaddress.ip_network("169.254.64.0/22")) for b in blocks)


def test_legs_are_cut_from_a_hosts_block_and_stop_at_its_end() -> None:
    block = storage_range("169.254.72.0/22")
    assert storage_addresses(0, block) == ("169.254.72.1/30", "169.254.72.2/30")
    assert storage_addresses(255, block) == ("169.254.75.253/30", "169.254.75.254/30")
    with pytest.raises(FailedPrecondition):
        storage_addresses(256, block)
    with pytest.raises(InvalidArgument):
        storage_range("10.0.0.0/22")  # outside the range backends grant
