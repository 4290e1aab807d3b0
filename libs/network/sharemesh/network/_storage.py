"""How a network server's Ganesha reaches a backend's cluster natively (FSAL_GLUSTER,
FSAL_CEPH) from its namespace: routes to the cluster through the server's storage leg,
and, for Ceph, the ceph.conf its libcephfs reads.

A namespace has a loopback of its own, so a cluster must be on an address the host
routes to (the development clusters bind a link-local address of their own,
`scripts/lib/dev-address.sh`). The host delivers to its own addresses whatever arrives on
a leg; reaching another host would need forwarding there, which the mesh never enables.

FSAL_CEPH reads no per-export config file: libcephfs in Ganesha finds the cluster
through `CEPH_CONF`, set per server to a conf rendered for it in its state directory.
One cluster per server: Ganesha has one conf per process."""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from sharemesh.runtime.errors import FailedPrecondition

_IPV4 = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])")


@dataclass(frozen=True)
class CephConf:
    """What a client needs of a cluster's ceph.conf to find it."""

    fsid: str
    mon_host: str
    public_network: str

    def routes(self) -> tuple[str, ...]:
        """The mons' addresses and the public network (where OSDs and MDSs listen)."""
        found = [str(ipaddress.ip_network(ip)) for ip in _IPV4.findall(self.mon_host) if _is_ip(ip)]
        for cidr in re.split(r"[,\s]+", self.public_network):
            try:
                found.append(str(ipaddress.ip_network(cidr, strict=False)))
            except ValueError:
                continue
        return tuple(dict.fromkeys(found))

    def render(self, state_dir: Path) -> str:
        lines = [
            "# Written by sharemesh: the cluster a network server's libcephfs reaches.",
            "[global]",
            f"mon_host = {self.mon_host}",
        ]
        if self.fsid:
            lines.append(f"fsid = {self.fsid}")
        # No admin socket: the backend's own Ganesha, same user, may hold the default one.
        lines += ["admin_socket =", f"log_file = {state_dir / 'ceph-client.log'}", ""]
        return "\n".join(lines)


class _CephConfParser(configparser.ConfigParser):
    def optionxform(self, optionstr: str) -> str:
        return optionstr.strip().replace(" ", "_").lower()  # `mon host` is `mon_host`


def read_ceph_conf(path: str | os.PathLike[str]) -> CephConf:
    """The cluster's [global] section (keys spelled with `_` or spaces alike)."""
    parser = _CephConfParser(interpolation=None, strict=False, inline_comment_prefixes=("#", ";"))
    try:
        parser.read_string(Path(path).read_text())
    except (OSError, configparser.Error) as error:
        raise FailedPrecondition(f"cannot read the Ceph cluster's conf {path}: {error}") from None
    section = parser["global"] if parser.has_section("global") else {}
    mon_host = section.get("mon_host", "")
    if not mon_host:
        raise FailedPrecondition(f"the Ceph cluster's conf {path} names no mon_host")
    return CephConf(section.get("fsid", ""), mon_host, section.get("public_network", ""))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def write_ceph_conf(cluster_conf: str, path: Path) -> None:
    """Renders a server's ceph.conf at `path` from the cluster's (its client log beside)."""
    text = read_ceph_conf(cluster_conf).render(path.parent)
    if path.exists() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(text)
    os.replace(staged, path)
