"""What one Ganesha export is, and the EXPORT block that says so."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol

from sharemesh.runtime import validation
from sharemesh.runtime.errors import InvalidArgument

Access = Literal["RW", "RO"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ganesha's config grammar has no escapes inside quoted strings, so anything that could end
# a string or a block, or any control character, is refused rather than quoted.
_UNSAFE = re.compile(r'["\x00-\x1f\x7f;{}#\\]')
# The only characters an address or CIDR needs: no scope ids (`%eth0`), names or wildcards.
# What Ganesha 4.3's parser does with some networks, tried against it: `0.0.0.0/0` fails
# the export, `::/0` and IPv6 prefixes of /100 to /128 are silently dropped, and a bare
# `0.0.0.0` means every client. The renderings below avoid all of these.
_EVERYONE: dict[int, tuple[Network, ...]] = {
    4: (ipaddress.ip_network("0.0.0.0/1"), ipaddress.ip_network("128.0.0.0/1")),
    6: (ipaddress.ip_network("::/1"), ipaddress.ip_network("8000::/1")),
}


class ClientRule(NamedTuple):
    """One CLIENT block: these addresses or CIDRs get this access."""

    clients: tuple[str, ...]
    access: Access


class Fsal(Protocol):
    """How an export reaches its data: one FSAL block. Each backend kind has its own
    (VFS for a local directory, PROXY_V4 for another NFS server, CEPH, GLUSTER…)."""

    def render(self) -> str:
        """The `FSAL { ... }` block; every value in it passes a closed grammar."""
        ...


@dataclass(frozen=True)
class VfsFsal:
    """A local directory (FSAL_VFS); the export's `path` is that directory."""

    def render(self) -> str:
        return "FSAL { Name = VFS; }"


@dataclass(frozen=True)
class ProxyV4Fsal:
    """Another NFSv4 server (FSAL_PROXY_V4); the export's `path` is the pseudo path there."""

    server: str
    """Address of the backend NFS server."""
    port: int = 2049
    """Its NFS port."""
    rpc_client_timeout: int = 5
    """Seconds; keeps a stop with a dead backend at ~5 s instead of ~50 s."""
    retry_sleep_time: int = 1

    def render(self) -> str:
        try:
            ipaddress.ip_address(self.server)
        except ValueError:
            raise InvalidArgument("fsal.server", "must be an IP address") from None
        return (
            f"FSAL {{ Name = PROXY_V4; Srv_Addr = {self.server}; NFS_Port = {self.port}; "
            f"RPC_Client_Timeout = {self.rpc_client_timeout}; "
            f"Retry_SleepTime = {self.retry_sleep_time}; }}"
        )


_GLUSTER_VOLUME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_GLUSTER_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
_GLUSTER_PATH = re.compile(r"^(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*/?$")


@dataclass(frozen=True)
class GlusterFsal:
    """A directory of a Gluster volume, reached through libgfapi (FSAL_GLUSTER); the
    export's `path` only names it in Ganesha. Ganesha keeps one client per volume for
    all its exports of it, and ending that client takes ~10 s (`glfs_fini`)."""

    server: str
    """The volfile server: an address or host name."""
    volume: str
    volpath: str
    """The directory inside the volume, absolute (`/` is the volume's root)."""

    def render(self) -> str:
        if not _GLUSTER_HOST.match(self.server):
            raise InvalidArgument("fsal.server", "must be an IP address or a host name")
        if not _GLUSTER_VOLUME.match(self.volume):
            raise InvalidArgument("fsal.volume", "letters, digits, '_', '.' and '-' only")
        if not self.volpath.startswith("/") or not _GLUSTER_PATH.match(self.volpath):
            raise InvalidArgument("fsal.volpath", "must be an absolute path of plain names")
        return (
            f'FSAL {{ Name = GLUSTER; Hostname = "{self.server}"; '
            f'Volume = "{self.volume}"; Volpath = "{self.volpath}"; }}'
        )


# Ceph names (file systems, cephx users) and cephx keys (base64): closed grammars, so
# nothing else reaches the config.
_CEPH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_CEPHX_KEY = re.compile(r"^[A-Za-z0-9+/]{16,256}={0,2}$")


@dataclass(frozen=True)
class CephFsal:
    """A CephFS directory through libcephfs (FSAL_CEPH); the export's `path` is the
    directory in the file system. The cluster is the one of the `ceph.conf` that
    libcephfs reads in Ganesha's process (`CEPH_CONF`)."""

    filesystem: str
    user_id: str
    """The cephx user Ganesha acts as, without `client.`."""
    secret_access_key: str = field(repr=False)

    def render(self) -> str:
        for name, value in (("fsal.filesystem", self.filesystem), ("fsal.user_id", self.user_id)):
            if not _CEPH_NAME.match(value):
                raise InvalidArgument(name, "letters, digits, '.', '-' and '_' only")
        if not _CEPHX_KEY.match(self.secret_access_key):
            raise InvalidArgument("fsal.secret_access_key", "must be a base64 cephx key")
        return (
            f'FSAL {{ Name = CEPH; Filesystem = "{self.filesystem}"; '
            f'User_Id = "{self.user_id}"; Secret_Access_Key = "{self.secret_access_key}"; }}'
        )


@dataclass(frozen=True)
class Export:
    """One export of one Ganesha instance. Without client rules nobody may mount it."""

    export_id: int
    """1..65535, unique in the instance (0 is Ganesha's pseudo root)."""
    path: str
    """The directory served (VFS), or the backend's path (PROXY_V4)."""
    pseudo: str
    """Where clients find it in the NFSv4 pseudo tree (and the v3 mount path)."""
    fsal: Fsal = field(default_factory=VfsFsal)
    clients: tuple[ClientRule, ...] = ()
    """CLIENT blocks in order; Ganesha grants the first block that matches a client."""
    squash: str = "No_Root_Squash"

    def __post_init__(self) -> None:
        if not 1 <= self.export_id <= 65535:
            raise InvalidArgument("export_id", "must be in 1..65535")
        _check_text("path", self.path)
        _check_text("pseudo", self.pseudo)
        if not self.pseudo.startswith("/") or self.pseudo == "/":
            raise InvalidArgument("pseudo", "must be an absolute path below /")
        if self.squash not in ("No_Root_Squash", "Root_Squash", "All_Squash", "Root_Id_Squash"):
            raise InvalidArgument("squash", f"unknown squash {self.squash!r}")
        for rule in self.clients:
            if rule.access not in ("RW", "RO"):
                raise InvalidArgument("clients.access", f"must be RW or RO, not {rule.access!r}")
            if not rule.clients:
                raise InvalidArgument("clients", "a rule names at least one client")
            for client in rule.clients:
                parse_client(client)

    def render(self) -> str:
        """The EXPORT block, one file per export."""
        lines = [
            "EXPORT {",
            f"    Export_Id = {self.export_id};",
            f'    Path = "{self.path}";',
            f'    Pseudo = "{self.pseudo}";',
            "    Protocols = 3, 4;",
            "    Transports = TCP;",
            "    SecType = sys;",
            "    Access_Type = None;",
            f"    Squash = {self.squash};",
            f"    {self.fsal.render()}",
        ]
        for rule in self.clients:
            clients = ", ".join(
                text for client in rule.clients for text in _config_clients(parse_client(client))
            )
            lines.append(f"    CLIENT {{ Clients = {clients}; Access_Type = {rule.access}; }}")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def expected_clients(self) -> list[tuple[str, Access]]:
        """The client list as Ganesha reports it back (DisplayExport), in order."""
        return [
            (str(net), rule.access)
            for rule in self.clients
            for client in rule.clients
            for net in _halves(parse_client(client))
        ]


def parse_client(text: str, field: str = "clients") -> Network:
    """A client as a config may name it: an IPv4 or IPv6 address or CIDR (the mesh's one
    closed grammar, `validation.check_network`), in a form Ganesha keeps. Host bits
    below the prefix are dropped (`10.1.2.3/8` is `10.0.0.0/8`)."""
    if not isinstance(text, str):
        raise InvalidArgument(field, "must be an IPv4 or IPv6 address or CIDR")
    net = ipaddress.ip_network(validation.check_network(field, text))
    if net.version == 6 and 100 <= net.prefixlen < 128:
        raise InvalidArgument(
            field,
            f"{text!r}: IPv6 prefixes from /100 to /127 are not supported by the NFS server; "
            "use /99 or shorter, or single addresses",
        )
    return net


def normalize_client(client: str) -> str:
    """A client's canonical form (`10.0.0.0/8`, `2001:db8::7/128`)."""
    return str(parse_client(client))


def _halves(net: Network) -> tuple[Network, ...]:
    """`net` as Ganesha can hold it: every address of a family as that family's two
    halves (exactly the same clients), any other network as itself."""
    return _EVERYONE[net.version] if net.prefixlen == 0 else (net,)


def _config_clients(net: Network) -> list[str]:
    """`net` as Ganesha's config takes it: IPv4 always with its prefix (a bare `0.0.0.0`
    would mean every client), an IPv6 host bare (its parser drops `/128`)."""
    return [
        str(half.network_address) if half.version == 6 and half.prefixlen == 128 else str(half)
        for half in _halves(net)
    ]


def _check_text(name: str, value: str) -> None:
    if not value or _UNSAFE.search(value):
        raise InvalidArgument(
            name, f"empty or contains a character Ganesha cannot quote: {value!r}"
        )


def client_rules(rules: Iterable[tuple[str, Access]]) -> tuple[ClientRule, ...]:
    """CLIENT blocks for (address or CIDR, access) pairs: one per network, most specific
    first, since Ganesha grants the first match (a host's own rule beats its subnet's).
    A network named twice gets the lesser access."""
    levels: dict[Network, Access] = {}
    for access_to, access in rules:
        net = parse_client(access_to, "access_to")
        levels[net] = "RO" if levels.get(net) == "RO" else access
    ordered = sorted(levels, key=lambda n: (-n.prefixlen, n.version, int(n.network_address)))
    return tuple(ClientRule((str(net),), levels[net]) for net in ordered)


_CLIENT_BLOCK = re.compile(
    r"\bCLIENT\s*\{\s*Clients\s*=\s*([^;{}]*);\s*Access_Type\s*=\s*(RW|RO)\s*;\s*\}"
)


def parse_clients(text: str) -> tuple[ClientRule, ...]:
    """The CLIENT blocks of an EXPORT block that `Export.render` wrote, in order: what a
    restarted driver reads back from an export file when it has nothing in memory."""
    rules = []
    for clients, access in _CLIENT_BLOCK.findall(text):
        names = tuple(normalize_client(c.strip()) for c in clients.split(","))
        rules.append(ClientRule(names, "RW" if access == "RW" else "RO"))
    return tuple(rules)


def share_pseudo(share_uid: str) -> str:
    """The NFSv4 pseudo path of a share, the same on its backend and on any gateway."""
    return f"/shares/{share_uid}"


def snapshot_pseudo(snapshot_uid: str) -> str:
    """The NFSv4 pseudo path of a snapshot's own read-only export."""
    return f"/snapshots/{snapshot_uid}"


def share_of_pseudo(pseudo: str) -> str | None:
    """The share uid behind a pseudo path `share_pseudo` made, else None."""
    uid = pseudo.removeprefix("/shares/")
    return uid if uid != pseudo and uid and "/" not in uid else None
