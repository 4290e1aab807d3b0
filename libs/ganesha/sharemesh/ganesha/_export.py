"""What one Ganesha export is, and the EXPORT block that says so."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from sharemesh.runtime.errors import InvalidArgument

Access = Literal["RW", "RO"]

# Ganesha's config grammar has no escapes inside quoted strings, so anything that could end
# a string or a block is refused rather than quoted.
_UNSAFE = re.compile(r'["\n\r;{}#\\]')
_HOSTNAME = re.compile(r"^(\*|[A-Za-z0-9*?]([A-Za-z0-9.*?-]{0,252}))$")


class ClientRule(NamedTuple):
    """One CLIENT block: these addresses, CIDRs or host names get this access."""

    clients: tuple[str, ...]
    access: Access


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
        _check_text("fsal.server", self.server)
        return (
            f"FSAL {{ Name = PROXY_V4; Srv_Addr = {self.server}; NFS_Port = {self.port}; "
            f"RPC_Client_Timeout = {self.rpc_client_timeout}; "
            f"Retry_SleepTime = {self.retry_sleep_time}; }}"
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
    fsal: VfsFsal | ProxyV4Fsal = field(default_factory=VfsFsal)
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
                normalize_client(client)

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
            clients = ", ".join(_config_client(client) for client in rule.clients)
            lines.append(f"    CLIENT {{ Clients = {clients}; Access_Type = {rule.access}; }}")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def expected_clients(self) -> list[tuple[str, Access]]:
        """The client list as Ganesha reports it back (DisplayExport), in order."""
        return [(normalize_client(c), rule.access) for rule in self.clients for c in rule.clients]


def normalize_client(client: str) -> str:
    """The form Ganesha prints a client in: networks with a prefix, names lowercased."""
    try:
        return str(ipaddress.ip_network(client, strict=False))
    except ValueError:
        pass
    if not _HOSTNAME.match(client):
        raise InvalidArgument("clients", f"not an address, CIDR or host name: {client!r}")
    return client.lower()


def _config_client(client: str) -> str:
    """A client as Ganesha's config takes it: a single host as a bare address, since
    its parser drops an IPv6 host written with /128."""
    try:
        network = ipaddress.ip_network(client, strict=False)
    except ValueError:
        return client
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def _check_text(name: str, value: str) -> None:
    if not value or _UNSAFE.search(value):
        raise InvalidArgument(
            name, f"empty or contains a character Ganesha cannot quote: {value!r}"
        )


def client_rules(rules: Iterable[tuple[str, Access]]) -> tuple[ClientRule, ...]:
    """CLIENT blocks for (address or CIDR, access) pairs: one per network, most specific
    first, since Ganesha grants the first match (a host's own rule beats its subnet's).
    A network named twice gets the lesser access."""
    levels: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, Access] = {}
    for access_to, access in rules:
        try:
            net = ipaddress.ip_network(access_to, strict=False)
        except ValueError:
            raise InvalidArgument(
                "access_to", f"not an IP address or CIDR: {access_to!r}"
            ) from None
        levels[net] = "RO" if levels.get(net) == "RO" else access
    ordered = sorted(levels, key=lambda n: (-n.prefixlen, n.version, int(n.network_address)))
    return tuple(ClientRule((str(net),), levels[net]) for net in ordered)


def share_pseudo(share_uid: str) -> str:
    """The NFSv4 pseudo path of a share, the same on its backend and on any gateway."""
    return f"/shares/{share_uid}"
