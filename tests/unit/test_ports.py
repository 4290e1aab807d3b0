"""Ports handed to children never repeat and never come from the ephemeral range."""

from pathlib import Path

from sharemesh.runtime.ports import free_port


def test_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 < p < first_ephemeral for p in ports)
