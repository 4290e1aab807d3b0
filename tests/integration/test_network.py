"""The `netns` tenant-network plugin against real bridges, namespaces, veths and Ganesha.

Two share networks use the same CIDR; members on one never reach the other, and the
host reaches neither. Every name carries a random suffix and every namespace, bridge,
veth and process the test makes is removed in finalizers, which then check that
`ip netns list` and `ip link` show nothing of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sharemesh.ganesha import ClientRule, Export, GaneshaInstance
from sharemesh.network import (
    bridge_name,
    ensure_bridge,
    ensure_namespace,
    exec_in,
    host_ifname,
    join,
    leave,
    members,
    namespace_exists,
    netns_name,
    remove_bridge,
    remove_namespace,
)
from sharemesh.runtime.errors import FailedPrecondition, InvalidArgument
from sharemesh.runtime.ports import free_port

from support import ensure_rpcbind, nfs_url, processes_mentioning, run

pytestmark = pytest.mark.integration

CIDR_PREFIX = "10.77.0"  # both networks: tenants choose overlapping CIDRs

# Listens on ADDR:PORT inside a namespace and answers every connection with REPLY.
SERVER = """
import socket, sys
addr, port, reply = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(reply)
    c.close()
"""

# Connects to ADDR:PORT and prints what it read, or ERR:<error>.
CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.0) as s:
        print(s.recv(16).decode())
except OSError as e:
    print(f"ERR:{e!r}")
"""


@dataclass
class Lab:
    """Everything one test created, for the finalizer to remove and check."""

    suffix: str = field(default_factory=lambda: secrets.token_hex(4))
    bridges: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    veths: set[str] = field(default_factory=set)

    def bridge(self, label: str) -> str:
        name = bridge_name(f"test-{label}-{self.suffix}")
        self.bridges.append(name)
        return name

    def netns(self, label: str) -> str:
        name = netns_name("t", f"{label}-{self.suffix}")
        self.namespaces.append(name)
        for bridge in self.bridges:
            self.veths.add(host_ifname(bridge, name))
        return name

    async def cleanup(self) -> None:
        errors: list[BaseException] = []
        for ns in self.namespaces:
            _kill_namespace_processes(ns)
            try:
                await remove_namespace(ns)
            except Exception as error:  # keep going; the raw fallback below still runs
                errors.append(error)
        for bridge in self.bridges:
            try:
                await remove_bridge(bridge)
            except Exception as error:
                errors.append(error)
        # Fallback in case the plugin itself is what broke.
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in [*self.veths, *self.bridges]:
            subprocess.run(["ip", "link", "del", "dev", link], capture_output=True)
        self.assert_clean()
        assert not errors, errors

    def assert_clean(self) -> None:
        netns_list = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        for ns in self.namespaces:
            assert ns not in netns_list, f"namespace {ns} left behind"
        for link in [*self.bridges, *self.veths]:
            # A deleted namespace is torn down asynchronously; its veths go soon after.
            deadline = time.monotonic() + 5
            while f" {link}" in links and time.monotonic() < deadline:
                time.sleep(0.05)
                links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True)
                links = links.stdout
            assert f" {link}" not in links, f"link {link} left behind"


def _kill_namespace_processes(ns: str) -> None:
    """Processes inside a namespace this test created are this test's own."""
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    for pid in out.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), 9)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        if not out.split():
            return
        time.sleep(0.05)


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    lab = Lab()
    try:
        yield lab
    finally:
        await lab.cleanup()


@dataclass
class Topology:
    a: str
    b: str
    a1: str
    a2: str
    b1: str
    b2: str


@pytest.fixture
async def topology(lab: Lab) -> Topology:
    """Networks A and B, both 10.77.0.0/24: a1 .1 and a2 .2 on A, b1 .2 and b2 .3 on B."""
    a, b = lab.bridge("A"), lab.bridge("B")
    t = Topology(a, b, lab.netns("a1"), lab.netns("a2"), lab.netns("b1"), lab.netns("b2"))
    await ensure_bridge(a)
    await ensure_bridge(b)
    for bridge, ns, host in (
        (a, t.a1, 1),
        (a, t.a2, 2),
        (b, t.b1, 2),  # the same address as a2, on the other network
        (b, t.b2, 3),
    ):
        await ensure_namespace(ns)
        await join(bridge, ns, f"{CIDR_PREFIX}.{host}/24")
    return t


@contextlib.asynccontextmanager
async def tcp_server(ns: str, address: str, port: int, reply: str) -> AsyncIterator[None]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, address, str(port), reply],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 10)
        assert line.strip() == "ready", f"server in {ns} did not start: {line}"
        yield
    finally:
        proc.kill()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


async def connect_from(ns: str, address: str, port: int) -> str:
    done = await exec_in(ns, sys.executable, "-c", CLIENT, address, str(port), timeout=10)
    return done.stdout.strip()


def host_connect_via(device: str, address: str, port: int) -> str:
    """Tries address:port from the root namespace, forced out through `device`."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        sock.settimeout(1.0)
        try:
            sock.connect((address, port))
            return "connected"
        except OSError as error:
            return repr(error)


# ---- 1. isolation ------------------------------------------------------------------------


async def test_overlapping_networks_are_isolated(topology: Topology) -> None:
    t = topology
    port = free_port()
    server = f"{CIDR_PREFIX}.2"
    assert await members(t.a) == sorted([host_ifname(t.a, t.a1), host_ifname(t.a, t.a2)])
    assert await members(t.b) == sorted([host_ifname(t.b, t.b1), host_ifname(t.b, t.b2)])

    async with tcp_server(t.a2, server, port, "A"), tcp_server(t.b1, server, port, "B"):
        for _ in range(3):
            assert await connect_from(t.a1, server, port) == "A"
            assert await connect_from(t.b2, server, port) == "B"
        # b2 (10.77.0.3) exists only on B: from A it is not there at all.
        assert (await connect_from(t.a1, f"{CIDR_PREFIX}.3", port)).startswith("ERR:")

        # The host is no member: no route to the tenant CIDR over any test interface...
        route = subprocess.run(
            ["ip", "route", "get", server], capture_output=True, text=True
        ).stdout
        for device in [t.a, t.b, *await members(t.a), *await members(t.b)]:
            assert f"dev {device}" not in route, route
        # ...and even a socket forced onto a tenant bridge gets nowhere within ~1 s.
        # (A plain connect would follow the host's default route off this machine, so
        # the test does not send one.)
        for bridge in (t.a, t.b):
            started = time.monotonic()
            result = host_connect_via(bridge, server, port)
            assert result != "connected", bridge
            assert time.monotonic() - started < 1.5, result


# ---- 2. idempotency ----------------------------------------------------------------------


async def test_every_call_is_idempotent(lab: Lab) -> None:
    bridge = lab.bridge("I")
    ns = lab.netns("i1")
    host = host_ifname(bridge, ns)
    assert len(bridge) <= 15 and len(host) <= 15
    assert bridge == bridge_name(f"test-I-{lab.suffix}")  # stable

    for _ in range(2):
        await ensure_bridge(bridge)
        await ensure_namespace(ns)
    assert await namespace_exists(ns)

    with pytest.raises(InvalidArgument):
        await join(bridge, ns, "10.77.0.300/24")
    with pytest.raises(FailedPrecondition):
        await join(bridge, ns + "x", f"{CIDR_PREFIX}.9/24")  # no such namespace

    for _ in range(2):
        await join(bridge, ns, f"{CIDR_PREFIX}.9/24")
        await join(bridge, ns, "fd77::9/64")
    assert await members(bridge) == [host]
    addrs = (await exec_in(ns, "ip", "-o", "addr", "show", "dev", "eth0")).stdout
    assert addrs.count(f"inet {CIDR_PREFIX}.9/24") == 1, addrs
    assert addrs.count("inet6 fd77::9/64") == 1, addrs
    lo = (await exec_in(ns, "ip", "-o", "link", "show", "dev", "lo")).stdout
    assert "UP" in lo

    # A half-made membership (the namespace end gone) is rebuilt by the next join.
    await exec_in(ns, "ip", "link", "del", "dev", "eth0")
    await join(bridge, ns, f"{CIDR_PREFIX}.9/24")
    assert await members(bridge) == [host]

    for _ in range(2):
        await leave(bridge, ns)
    assert await members(bridge) == []

    await join(bridge, ns, f"{CIDR_PREFIX}.9/24")  # rejoin after leave
    assert await members(bridge) == [host]

    # A namespace still running processes is not removed behind their back.
    sleeper = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            if str(sleeper.pid) in out.stdout.split():
                break
            await asyncio.sleep(0.02)
        with pytest.raises(FailedPrecondition):
            await remove_namespace(ns)
    finally:
        sleeper.kill()
        sleeper.wait(5)

    for _ in range(2):
        await remove_namespace(ns)  # takes its veth, and so the bridge port, with it
    assert not await namespace_exists(ns)
    assert await members(bridge) == []
    for _ in range(2):
        await remove_bridge(bridge)
    assert await members(bridge) == []
    lab.assert_clean()


# ---- 3. a real Ganesha on a tenant network -----------------------------------------------


async def test_ganesha_serves_only_its_network(
    topology: Topology, tmp_path: Path, payload: Path
) -> None:
    t = topology
    ensure_rpcbind()
    server = f"{CIDR_PREFIX}.2"
    data = tmp_path / "data"
    data.mkdir()
    ganesha = GaneshaInstance(
        tmp_path / "ganesha", free_port(), free_port(), netns=t.a2, bind_address=server
    )
    try:
        await ganesha.start()
        await ganesha.apply(
            Export(
                export_id=1,
                path=str(data),
                pseudo="/tenant/data",
                clients=(ClientRule((f"{CIDR_PREFIX}.1/32",), "RW"),),
            )
        )
        v3 = nfs_url(server, "/tenant/data", "f", 3, ganesha.nfs_port, ganesha.mount_port)
        v4 = nfs_url(server, "/tenant/data", "f", 4, ganesha.nfs_port)

        done = await exec_in(t.a1, "nfs-cp", str(payload), v3, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        back = tmp_path / "back"
        done = await exec_in(t.a1, "nfs-cp", v4, str(back), timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert back.read_bytes() == payload.read_bytes()
        assert (data / "f").read_bytes() == payload.read_bytes()

        # The same URLs from network B reach b1 (B's own 10.77.0.2), never this Ganesha.
        for ns in (t.b1, t.b2):
            for url in (v3, v4):
                other = tmp_path / f"other-{ns}-{url[-1]}"
                done = await exec_in(ns, "nfs-cp", url, str(other), timeout=30, check=False)
                assert done.returncode != 0, (ns, url, done.stdout)
                assert not other.exists() or other.read_bytes() != payload.read_bytes()
    finally:
        await ganesha.stop()
        assert not processes_mentioning(str(ganesha.state_dir)), "a ganesha process survived"
        assert not processes_mentioning(str(ganesha.bus_config)), "a dbus-daemon survived"


async def test_a_mesh_namespace_never_forwards_even_on_a_forwarding_host(lab: Lab) -> None:
    """Hypervisors usually forward; a gateway's namespace must not route between its
    tenant bridge and its storage leg."""
    host_setting = Path("/proc/sys/net/ipv4/ip_forward")
    before = host_setting.read_text().strip()
    ns = lab.netns("fwd")
    host_setting.write_text("1")
    try:
        await ensure_namespace(ns)
    finally:
        host_setting.write_text(before)
    code, out = await run("ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward")
    assert (code, out.strip()) == (0, "0")
