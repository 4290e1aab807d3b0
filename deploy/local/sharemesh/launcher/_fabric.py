"""The machine's stand-in for a data centre: each host a network namespace with its own
address on a management bridge, as hypervisors on a flat management network.

Hosts route each other's storage blocks (`[gateway] storage_range`: where a host's
gateways' storage legs are cut from), so a gateway on one host reaches a backend's
NFS export on another. The bridge has an address too, for the launcher and the
operator's tools on the machine itself, and it is each host's default route: what the
machine serves on its own addresses (a development Ceph or Gluster cluster) is the
storage network every host reaches, and the machine routes each host's storage block
back to it. The machine forwards nothing (its forwarding stays as it is). Everything
is made idempotently and removed by `down`, processes left in a host's namespace
included.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sharemesh.runtime.commands import CommandError, run
from sharemesh.runtime.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

MAX_HOSTS = 15
"""Each host takes a /22 of 169.254.64.0/18 for its storage legs; the first is kept for
processes outside the simulated hosts."""
_MANAGEMENT_SPACE = ipaddress.IPv4Network("100.64.0.0/10")  # shared address space, RFC 6598


@dataclass(frozen=True)
class Host:
    name: str
    """`host-1` … `host-N`: what attachments and backends name."""
    index: int
    netns: str
    address: str
    """Its address on the management network: every service of it binds this."""
    storage_range: str
    state_dir: Path
    """What is this host's alone: its etcd member's data, pools, gateway state."""


def _storage_block(index: int) -> str:
    return f"169.254.{64 + 4 * index}.0/22"


class Fabric:
    """`hosts` hosts, named after a tag kept in `DIR/fabric.json` so that the addresses
    (and so export locations) stay the same from one `up` to the next."""

    def __init__(self, state_dir: Path, hosts: int) -> None:
        if not 1 <= hosts <= MAX_HOSTS:
            raise InvalidArgument("hosts", f"must be from 1 to {MAX_HOSTS}")
        self._file = state_dir / "fabric.json"
        kept = json.loads(self._file.read_text()) if self._file.exists() else {}
        if kept and kept["hosts"] != hosts:
            raise FailedPrecondition(
                f"{state_dir} holds a mesh of {kept['hosts']} hosts, not {hosts}"
            )
        self.tag = kept.get("tag") or hashlib.sha256(str(state_dir).encode()).hexdigest()[:6]
        self.subnet = ipaddress.IPv4Network(kept["subnet"]) if kept else self._free_subnet()
        self._file.write_text(
            json.dumps({"tag": self.tag, "subnet": str(self.subnet), "hosts": hosts})
        )
        self.bridge = f"smm{self.tag}"
        addresses = list(self.subnet.hosts())
        self.gateway_address = str(addresses[-1])
        """The bridge's own address: the machine's way onto the management network."""
        self.hosts = [
            Host(
                name=f"host-{k}",
                index=k,
                netns=f"sm-host-{self.tag}-{k}",
                address=str(addresses[k - 1]),
                storage_range=_storage_block(k),
                state_dir=state_dir / "hosts" / f"host-{k}",
            )
            for k in range(1, hosts + 1)
        ]

    def _free_subnet(self) -> ipaddress.IPv4Network:
        """A /24 of 100.64.0.0/10 no interface of the machine is on, picked by the tag."""
        used = [ipaddress.IPv4Interface(a).network for a in _machine_addresses()]
        blocks = list(_MANAGEMENT_SPACE.subnets(new_prefix=24))
        start = int(self.tag, 16) % len(blocks)
        for offset in range(len(blocks)):
            block = blocks[(start + offset) % len(blocks)]
            if not any(block.overlaps(u) for u in used):
                return block
        raise FailedPrecondition("no free /24 left in 100.64.0.0/10 for a management network")

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise InvalidArgument("host", f"no host {name!r}; hosts: {[h.name for h in self.hosts]}")

    async def up(self) -> None:
        prefix = self.subnet.prefixlen
        await _ip_idempotent("link", "add", self.bridge, "type", "bridge")
        await _ip("addr", "replace", f"{self.gateway_address}/{prefix}", "dev", self.bridge)
        await _ip("link", "set", self.bridge, "up")
        for host in self.hosts:
            host.state_dir.mkdir(parents=True, exist_ok=True)
            if not Path(f"/run/netns/{host.netns}").exists():
                await _ip("netns", "add", host.netns)
            await _ip("-n", host.netns, "link", "set", "lo", "up")
            leg = f"{self.bridge}h{host.index}"
            if not Path(f"/sys/class/net/{leg}").exists():
                await _ip("link", "add", leg, "type", "veth", "peer", "name", "mgmt0",
                          "netns", host.netns)  # fmt: skip
            await _ip("link", "set", leg, "master", self.bridge, "up")
            await _ip("-n", host.netns, "addr", "replace", f"{host.address}/{prefix}",
                      "dev", "mgmt0")  # fmt: skip
            await _ip("-n", host.netns, "link", "set", "mgmt0", "up")
            # A host forwards between its gateways' storage legs and the network.
            await run("ip", "netns", "exec", host.netns, "sysctl", "-q",
                      "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                      "net.ipv4.conf.default.rp_filter=0")  # fmt: skip
            for other in self.hosts:
                if other is not host:
                    await _ip("-n", host.netns, "route", "replace", other.storage_range,
                              "via", other.address)  # fmt: skip
            await _ip("-n", host.netns, "route", "replace", "default",
                      "via", self.gateway_address)  # fmt: skip
            # The machine's answers to a host's gateways (the routes go with the bridge).
            await _ip("route", "replace", host.storage_range, "via", host.address)
        log.info(
            "management network %s on %s: %s",
            self.subnet,
            self.bridge,
            ", ".join(f"{h.name}={h.address}" for h in self.hosts),
        )

    async def kill_processes(self, netns: str) -> None:
        """SIGKILL to whatever still runs in a namespace."""
        with contextlib.suppress(CommandError):
            result = await run("ip", "netns", "pids", netns, check=False)
            for pid in result.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)

    async def down(self) -> None:
        for host in self.hosts:
            if Path(f"/run/netns/{host.netns}").exists():
                await self.kill_processes(host.netns)
                await _ip_idempotent("netns", "del", host.netns)
        await _ip_idempotent("link", "del", self.bridge)


def _machine_addresses() -> list[str]:
    out = subprocess.run(
        ["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True
    ).stdout
    return [
        f"{a['local']}/{a['prefixlen']}"
        for link in json.loads(out)
        for a in link.get("addr_info", [])
    ]


async def _ip(*args: str) -> None:
    await run("ip", *args)


async def _ip_idempotent(*args: str) -> None:
    """`ip` where "already there" (add) or "not there" (del) is success."""
    try:
        await run("ip", *args)
    except CommandError as error:
        text = str(error).lower()
        if not any(
            hint in text
            for hint in ("exists", "cannot find", "no such", "does not exist", "cannot remove")
        ):
            raise
