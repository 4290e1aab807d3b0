"""Tenant networks from Linux bridges, network namespaces and veth pairs (DESIGN §8).

A share network is one bridge in the root namespace; a member (share server, gateway,
test client) is a namespace joined to it by a veth pair whose host end is a bridge port.
The host takes no part: the bridge has no address, no IPv6 and answers no ARP, so the
root namespace cannot reach a tenant and tenants with overlapping CIDRs on different
bridges never meet.

Every call is idempotent: repeating it after a crash finishes the job, and removing
what is absent succeeds. All `ip` calls go through `sharemesh.runtime.commands.run`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sharemesh.runtime.commands import CommandError, run
from sharemesh.runtime.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger("sharemesh.network")

_IP_TIMEOUT = 30.0
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")  # IFNAMSIZ - 1
_NETNS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KIND = re.compile(r"^[a-z0-9]{1,16}$")
_BRIDGE_PREFIX = "smb"
_VETH_PREFIX = "smv"
# Every namespace the mesh makes for itself starts with this; tenants' never may.
MESH_NETNS_PREFIX = "sm-"

# stderr of `ip` when the thing it was asked about is not there
_ABSENT = (
    "cannot find device",
    "does not exist",
    "no such device",
    "no such file or directory",
    "cannot open network namespace",
)


# ---- names -------------------------------------------------------------------------------


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def bridge_name(network_id: str) -> str:
    """The bridge of a share network: `smb` + 10 hex digits of sha256(network_id)."""
    if not network_id:
        raise InvalidArgument("network_id", "must not be empty")
    return f"{_BRIDGE_PREFIX}{_digest(network_id)[:10]}"


def netns_name(kind: str, key: str) -> str:
    """A member's namespace: `sm-{kind}-{12 hex of sha256(key)}` (kind: a-z0-9, ≤16)."""
    if not _KIND.match(kind):
        raise InvalidArgument("kind", "must be 1-16 characters a-z, 0-9")
    if not key:
        raise InvalidArgument("key", "must not be empty")
    return f"{MESH_NETNS_PREFIX}{kind}-{_digest(key)[:12]}"


def member_ifname(network_id: str) -> str:
    """The interface a member namespace has on a network: named after the network, so a
    namespace can be on several networks (or join a new one while an old one goes)."""
    return "smn" + _digest(network_id)[:10]


def host_ifname(bridge: str, netns: str) -> str:
    """The host end of the veth joining `netns` to `bridge` (15 characters)."""
    _check_ifname("bridge", bridge)
    _check_netns(netns)
    return f"{_VETH_PREFIX}{_digest(bridge, netns)[:12]}"


def _check_ifname(field: str, name: str) -> None:
    if not _IFNAME.match(name):
        raise InvalidArgument(field, f"{name!r} is not an interface name (1-15 of A-Za-z0-9_.-)")


def _check_netns(name: str) -> None:
    if not _NETNS.match(name):
        raise InvalidArgument("netns", f"{name!r} is not a namespace name (1-64 of A-Za-z0-9_.-)")


# ---- ip plumbing -------------------------------------------------------------------------


def _absent(error: CommandError) -> bool:
    text = error.stderr.lower()
    return any(marker in text for marker in _ABSENT)


async def _ip(*args: str, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = ("ip", "-n", netns, *args) if netns else ("ip", *args)
    return await run(*argv, timeout=_IP_TIMEOUT)


async def _ip_json(*args: str, netns: str | None = None) -> list[dict[str, Any]]:
    out = (await _ip("-j", *args, netns=netns)).stdout.strip()
    return json.loads(out) if out else []


async def _link(name: str, netns: str | None = None) -> dict[str, Any] | None:
    """`ip -d link show` of one interface, or None when it does not exist."""
    try:
        links = await _ip_json("-d", "link", "show", "dev", name, netns=netns)
    except CommandError as error:
        if _absent(error):
            return None
        raise
    return links[0] if links else None


def _kind(link: Mapping[str, Any]) -> str | None:
    return (link.get("linkinfo") or {}).get("info_kind")


async def _delete_link(name: str, netns: str | None = None) -> None:
    try:
        await _ip("link", "del", "dev", name, netns=netns)
    except CommandError as error:
        if not _absent(error):
            raise


def _host_sysctl(ifname: str, key: str, value: str) -> None:
    """Sets a per-interface sysctl in the root namespace; skipped where it does not exist
    (no IPv6 on this kernel, or the interface vanished meanwhile)."""
    family, _, name = key.partition(".")
    path = Path("/proc/sys/net") / family / "conf" / ifname / name
    try:
        path.write_text(value)
    except FileNotFoundError:
        pass


# ---- bridges -----------------------------------------------------------------------------


async def ensure_bridge(bridge: str) -> None:
    """Creates the bridge if absent and sets it up. The host gets no address on it."""
    _check_ifname("bridge", bridge)
    link = await _link(bridge)
    if link is not None and _kind(link) != "bridge":
        raise FailedPrecondition(f"{bridge} exists and is a {_kind(link) or 'plain'} link")
    if link is None:
        try:
            await _ip("link", "add", "name", bridge, "type", "bridge")
            log.info("bridge %s created", bridge)
        except CommandError as error:
            if "exists" not in error.stderr.lower():
                raise
    # The root namespace is not a member: no IPv6 (no link-local), no ARP (it neither
    # answers tenants for host addresses nor resolves tenants' addresses), strict rp_filter.
    _host_sysctl(bridge, "ipv6.disable_ipv6", "1")
    _host_sysctl(bridge, "ipv4.rp_filter", "1")
    _host_sysctl(bridge, "ipv4.arp_ignore", "8")
    await _ip("link", "set", "dev", bridge, "arp", "off", "up")


async def remove_bridge(bridge: str) -> None:
    """Deletes the bridge and the veth pairs still attached to it (their namespaces stay)."""
    _check_ifname("bridge", bridge)
    link = await _link(bridge)
    if link is None:
        return
    if _kind(link) != "bridge":
        raise FailedPrecondition(f"{bridge} is a {_kind(link) or 'plain'} link, not a bridge")
    for port in await members(bridge):
        await _delete_link(port)
    await _delete_link(bridge)
    log.info("bridge %s removed", bridge)


async def members(bridge: str) -> list[str]:
    """Host-end interfaces enslaved to the bridge (empty when the bridge is absent)."""
    _check_ifname("bridge", bridge)
    try:
        links = await _ip_json("link", "show", "master", bridge)
    except CommandError as error:
        if _absent(error):
            return []
        raise
    return sorted(link["ifname"] for link in links)


# ---- namespaces --------------------------------------------------------------------------


async def namespace_exists(netns: str) -> bool:
    _check_netns(netns)
    return any(entry.get("name") == netns for entry in await _ip_json("netns", "list"))


async def ensure_namespace(netns: str) -> None:
    """Creates the namespace if absent and sets its loopback up."""
    _check_netns(netns)
    for attempt in (1, 2):
        if not await namespace_exists(netns):
            try:
                await _ip("netns", "add", netns)
                log.info("namespace %s created", netns)
            except CommandError as error:
                if "exists" not in error.stderr.lower():
                    raise
        try:
            await _ip("link", "set", "dev", "lo", "up", netns=netns)
            await _no_forwarding(netns)
            return
        except CommandError as error:
            # A crash inside `ip netns add` can leave the name without a namespace behind it.
            unusable = _absent(error) or "invalid argument" in error.stderr.lower()
            if attempt == 2 or not unusable:
                raise
            log.warning("namespace %s is unusable (%s); recreating", netns, error.stderr.strip())
            await _ip_netns_del(netns)


async def _no_forwarding(netns: str) -> None:
    """A mesh namespace sits on a tenant bridge and may have a storage leg to the host:
    it must never route between them. A new namespace copies the host's IPv4 forwarding
    setting, which a hypervisor often has on, so it is switched off explicitly."""
    await run(
        "ip",
        "netns",
        "exec",
        netns,
        "sh",
        "-c",
        "echo 0 > /proc/sys/net/ipv4/conf/all/forwarding",
        timeout=_IP_TIMEOUT,
    )


async def remove_namespace(netns: str) -> None:
    """Deletes the namespace and, first, its veths (so their host ends are gone on return:
    the kernel tears a deleted namespace down asynchronously).

    Refuses (FailedPrecondition) while processes still run inside: they would keep the
    namespace, its interfaces and its bridge ports alive after the name is gone.
    """
    _check_netns(netns)
    if not await namespace_exists(netns):
        return
    pids = (await _ip("netns", "pids", netns)).stdout.split()
    if pids:
        raise FailedPrecondition(
            f"namespace {netns} still runs processes {' '.join(pids)}; stop them first"
        )
    try:
        veths = await _ip_json("link", "show", "type", "veth", netns=netns)
    except CommandError as error:
        if not _absent(error):
            raise
        veths = []
    for link in veths:
        await _delete_link(link["ifname"], netns=netns)
    await _ip_netns_del(netns)
    log.info("namespace %s removed", netns)


async def bridges_of(netns: str) -> list[str]:
    """The bridges `netns` is joined to: the masters of its veths' host ends (none when
    the namespace is absent). Found from the kernel alone, for a release without etcd."""
    _check_netns(netns)
    if not await namespace_exists(netns):
        return []
    inside = await _ip_json("-d", "link", "show", "type", "veth", netns=netns)
    peers = {link.get("link_index") for link in inside}
    return sorted(
        {
            link["master"]
            for link in await _ip_json("link", "show", "type", "veth")
            if link.get("ifindex") in peers and link.get("master")
        }
    )


async def _ip_netns_del(netns: str) -> None:
    try:
        await _ip("netns", "del", netns)
    except CommandError as error:
        if not _absent(error):
            raise


async def exec_in(
    netns: str,
    *argv: str,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Runs `argv` inside the namespace (`ip netns exec NETNS argv…`) to completion."""
    _check_netns(netns)
    if not argv:
        raise InvalidArgument("argv", "must not be empty")
    return await run("ip", "netns", "exec", netns, *argv, timeout=timeout, env=env, check=check)


# ---- membership --------------------------------------------------------------------------


async def join(bridge: str, netns: str, address_cidr: str, ifname: str = "eth0") -> None:
    """Joins `netns` to `bridge` with a veth pair; its end is `ifname` with `address_cidr`.

    The bridge and the namespace must exist. A half-made or stale pair (say, from a crash,
    or from an earlier namespace of the same name) is rebuilt.
    """
    _check_ifname("bridge", bridge)
    _check_netns(netns)
    _check_ifname("ifname", ifname)
    try:
        address = ipaddress.ip_interface(address_cidr)
    except ValueError as error:
        raise InvalidArgument("address_cidr", str(error)) from None
    if "/" not in address_cidr:
        raise InvalidArgument("address_cidr", "needs a prefix length, e.g. 10.20.0.5/24")
    host = host_ifname(bridge, netns)

    bridge_link = await _link(bridge)
    if bridge_link is None or _kind(bridge_link) != "bridge":
        raise FailedPrecondition(f"bridge {bridge} does not exist")
    if not await namespace_exists(netns):
        raise FailedPrecondition(f"namespace {netns} does not exist")

    if not await _pair_intact(host, netns, ifname):
        await _delete_link(host)
        if await _link(ifname, netns=netns) is not None:
            raise FailedPrecondition(f"namespace {netns} already has an interface {ifname}")
        # The peer is created inside the namespace, under its final name, in one step.
        await _ip("link", "add", "name", host, "type", "veth", "peer", "name", ifname,
                  "netns", netns)  # fmt: skip
        log.info("veth %s <-> %s:%s created", host, netns, ifname)

    _host_sysctl(host, "ipv6.disable_ipv6", "1")
    await _ip("link", "set", "dev", host, "master", bridge)
    await _ip("link", "set", "dev", host, "up")

    extra = ("nodad",) if address.version == 6 else ()
    await _ip("addr", "replace", str(address), "dev", ifname, *extra, netns=netns)
    await _ip("link", "set", "dev", ifname, "up", netns=netns)
    await _ip("link", "set", "dev", "lo", "up", netns=netns)
    log.info("%s joined %s as %s on %s", netns, bridge, address, ifname)


async def _pair_intact(host: str, netns: str, ifname: str) -> bool:
    """The host end exists and its peer is `ifname` inside `netns`."""
    outer = await _link(host)
    if outer is None:
        return False
    inner = await _link(ifname, netns=netns)
    return (
        _kind(outer) == "veth"
        and inner is not None
        and _kind(inner) == "veth"
        and outer.get("link_index") == inner.get("ifindex")
        and inner.get("link_index") == outer.get("ifindex")
    )


async def leave(bridge: str, netns: str) -> None:
    """Deletes the veth pair joining `netns` to `bridge` (absent: success)."""
    host = host_ifname(bridge, netns)
    link = await _link(host)
    if link is None:
        return
    if _kind(link) != "veth":
        raise FailedPrecondition(f"{host} is not a veth")
    await _delete_link(host)
    log.info("%s left %s", netns, bridge)


# Storage legs: point-to-point links from the host to its gateways' namespaces, so a
# gateway can proxy a backend's NFS export. Link-local, so no tenant range overlaps it
# inside the gateway's namespace; backends grant this range, which only gateways have.
# On a mesh of several hosts each host takes a block of it (`[gateway] storage_range`),
# routed to that host, so a backend on one host answers a gateway on another.
STORAGE_RANGE = ipaddress.IPv4Network("169.254.64.0/18")


def storage_range(cidr: str) -> ipaddress.IPv4Network:
    """`cidr` as a block of STORAGE_RANGE legs are cut from (a /30 each)."""
    try:
        block = ipaddress.ip_network(cidr)
    except ValueError as error:
        raise InvalidArgument("gateway.storage_range", str(error)) from None
    if not isinstance(block, ipaddress.IPv4Network) or not block.subnet_of(STORAGE_RANGE):
        raise InvalidArgument("gateway.storage_range", f"must be a block of {STORAGE_RANGE}")
    return block


def storage_addresses(index: int, block: ipaddress.IPv4Network = STORAGE_RANGE) -> tuple[str, str]:
    """(host end, namespace end) of storage leg `index` of `block`, each a /30 address."""
    base = int(block.network_address) + 4 * index
    if base + 4 > int(block.broadcast_address) + 1:
        raise FailedPrecondition("no storage leg left on this host")
    host = ipaddress.ip_address(base + 1)
    return f"{host}/30", f"{host + 1}/30"


async def ensure_storage_leg(
    netns: str,
    index: int,
    ifname: str = "storage0",
    block: ipaddress.IPv4Network = STORAGE_RANGE,
) -> None:
    """A veth from the host into `netns`, addressed as storage leg `index` of `block`."""
    _check_netns(netns)
    host = "sms" + _digest(netns)[:12]
    host_address, ns_address = storage_addresses(index, block)
    if not await _pair_intact(host, netns, ifname):
        await _delete_link(host)
        await _ip("link", "add", "name", host, "type", "veth", "peer", "name", ifname,
                  "netns", netns)  # fmt: skip
    _host_sysctl(host, "ipv6.disable_ipv6", "1")
    await _ip("addr", "replace", host_address, "dev", host)
    await _ip("link", "set", "dev", host, "up")
    await _ip("addr", "replace", ns_address, "dev", ifname, netns=netns)
    await _ip("link", "set", "dev", ifname, "up", netns=netns)
    log.info("storage leg %s <-> %s:%s (%s)", host, netns, ifname, ns_address)


async def ensure_storage_routes(
    netns: str,
    index: int,
    destinations: Iterable[str],
    ifname: str = "storage0",
    block: ipaddress.IPv4Network = STORAGE_RANGE,
) -> None:
    """Routes exactly `destinations` (addresses or CIDRs of backends' clusters) through
    storage leg `index` of `netns`, so its native FSALs reach them; others go."""
    _check_netns(netns)
    via = storage_addresses(index, block)[0].split("/")[0]
    wanted: set[str] = set()
    for destination in destinations:
        try:
            wanted.add(str(ipaddress.ip_network(destination, strict=False)))
        except ValueError as error:
            raise InvalidArgument("routes", str(error)) from None
    present = {
        str(ipaddress.ip_network(route["dst"]))
        for route in await _ip_json("route", "show", "dev", ifname, "via", via, netns=netns)
        if route.get("dst") not in (None, "default")
    }
    for destination in sorted(present - wanted):
        await _ip("route", "del", destination, "via", via, "dev", ifname, netns=netns)
    for destination in sorted(wanted - present):
        await _ip("route", "replace", destination, "via", via, "dev", ifname, netns=netns)
        log.info("%s routes %s through its storage leg", netns, destination)
