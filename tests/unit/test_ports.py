"""Ports handed to children never repeat and never come from the ephemeral range, and
parallel test workers on one machine pick from shares of their own."""

from pathlib import Path

import pytest

from sharemesh.runtime import ports
from sharemesh.runtime.ports import free_port


def test_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 < p < first_ephemeral for p in ports)


def test_a_port_share_keeps_every_pick_in_its_share(monkeypatch: pytest.MonkeyPatch) -> None:
    picks = {}
    for index in range(3):
        monkeypatch.setenv(ports.SHARE_ENV, f"{index}/3")
        picks[index] = {free_port() for _ in range(30)}
    # Each share is every third port of the range: no two workers ever pick alike.
    for index, found in picks.items():
        assert {(port - 10000) % 3 for port in found} == {index}, found


def test_without_a_share_the_whole_range_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ports.SHARE_ENV, raising=False)
    found = {free_port() for _ in range(60)}
    assert len({(port - 10000) % 3 for port in found}) == 3


@pytest.mark.parametrize("share", ["1", "a/3", "3/3", "-1/3", "1/0"])
def test_a_malformed_share_is_named(monkeypatch: pytest.MonkeyPatch, share: str) -> None:
    monkeypatch.setenv(ports.SHARE_ENV, share)
    with pytest.raises(ValueError, match="SHAREMESH_PORT_SHARE"):
        free_port()
