"""Typed configuration: one TOML file for the whole mesh, plus environment overrides.

Every process reads the same file and takes its own section. An environment variable
`SHAREMESH__SECTION__FIELD=value` overrides `[section] field`; the launcher uses that to
hand each child the etcd endpoint it started.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidArgument

ENV_PREFIX = "SHAREMESH__"


@dataclass(frozen=True)
class EtcdConfig:
    endpoint: str = "http://127.0.0.1:2379"
    """Client URL of the etcd cluster that holds all state; or the URLs of its members
    (IPv4 addresses), separated by commas, tried in order: this host's member first."""
    prefix: str = "/sharemesh/"
    """Root of every key the mesh writes, so meshes can share one etcd."""
    lease_ttl_seconds: int = 10
    """TTL of registration, election and lock leases; a dead process's keys vanish after it."""
    ca_file: str = ""
    """PEM CA(s) an `https://` etcd's certificate must chain to; empty: `[tls] ca_file`."""
    cert_file: str = ""
    """Client certificate this process presents to etcd; empty: `[tls] cert_file`."""
    key_file: str = ""
    """Private key of the etcd client certificate; empty: `[tls] key_file`."""


@dataclass(frozen=True)
class TokenConfig:
    token: str
    """The bearer key a caller presents in `authorization: Bearer <key>`."""
    project: str = ""
    """The project the key acts in; empty for an admin key."""
    admin: bool = False
    """An admin key may act in any project and call admin methods."""


@dataclass(frozen=True)
class ApiConfig:
    listen: str = "127.0.0.1:8470"
    """Address of the public API."""
    tokens: tuple[TokenConfig, ...] = ()
    """Static credentials; key management is a later feature."""
    admin_token_file: str = ""
    """A file holding one admin key (the launcher writes `DIR/admin.token`)."""
    tls_cert_file: str = ""
    """PEM certificate (chain) the API serves TLS with; required beyond loopback."""
    tls_key_file: str = ""
    """PEM private key of `tls_cert_file`."""


@dataclass(frozen=True)
class SchedulerConfig:
    listen: str = "127.0.0.1:0"
    """Address of the scheduler's internal service."""
    filters: tuple[str, ...] = ("retry", "availability_zone", "capabilities", "capacity")
    """Filters in the order they run (modules under `sharemesh.scheduler.filters`). A share
    that no pool takes is told the filter that rejected the last pools, so what a pool
    is comes before what it has left: "capacity" then means the fitting pools are full."""
    weighers: Mapping[str, float] = field(
        default_factory=lambda: {"capacity": 1.0, "goodness": 0.0}
    )
    """Weigher multipliers: capacity > 0 spreads shares, < 0 stacks them."""
    max_attempts: int = 3
    """Pools a create may be tried on before it fails."""


@dataclass(frozen=True)
class BackendConfig:
    name: str
    """Backend name, unique in the mesh; pools are named `backends/{name}/pools/{pool}`."""
    driver: str = "local"
    """Driver module under `sharemesh.driver_host.drivers`."""
    listen: str = "127.0.0.1:0"
    """Address of this backend's driver-host."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Driver-specific settings, checked by the driver's own config type."""
    state_dir: str = ""
    """Where the driver-host keeps its share servers (default: under /var/lib/sharemesh)."""
    host: str = ""
    """The host whose driver-host serves this backend (`sharemesh up --hosts N` starts it
    there; its hosts are `host-1` … `host-N`); empty: the first host."""


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "localhost"
    """Name of the hypervisor host this gateway serves."""
    listen: str = "127.0.0.1:0"
    """Address of the gateway's internal service."""
    state_dir: str = "/var/lib/sharemesh/gateway"
    """Where the gateway keeps its Ganesha instances' configs, pidfiles and logs."""
    storage_range: str = "169.254.64.0/18"
    """The link-local block this host cuts its gateways' storage legs from (a /30 each).
    On several hosts each takes its own block of 169.254.64.0/18, routed to it, so that
    a backend on another host can answer a gateway's proxy here."""


@dataclass(frozen=True)
class TlsConfig:
    """Mutual TLS between the mesh's own processes (the public API has `[api] tls_*`)."""

    ca_file: str = ""
    """PEM of the mesh CA: a peer's certificate must chain to it. During a CA rotation,
    the old and the new CA concatenated."""
    cert_file: str = ""
    """This process's certificate, its identity a `spiffe://sharemesh/service/{role}`
    URI SAN; servers reload it (and the CA) when the files change. Empty: plaintext,
    which internal servers refuse beyond loopback."""
    key_file: str = ""
    """PEM private key of `cert_file`."""
    probe_listen: str = ""
    """HOST:PORT answering only `grpc.health.v1`, in plaintext, for probes that cannot
    present a certificate (kubelet `grpc:` probes reach the pod's address, others may
    keep it on loopback); empty: none."""


@dataclass(frozen=True)
class TelemetryConfig:
    spans_dir: str = ""
    """Where each process writes its trace spans as JSON lines; empty: no tracing."""
    metrics_listen: str = ""
    """HOST:PORT where a process serves its metrics as Prometheus text (`/metrics`);
    empty: no metrics. Each process needs its own: set it per process with
    `SHAREMESH__TELEMETRY__METRICS_LISTEN` (the launcher gives each child a port)."""


@dataclass(frozen=True)
class QuotaConfig:
    default_gib: int = 0
    """GiB of shares a project may hold; 0 is no limit."""
    projects: Mapping[str, int] = field(default_factory=dict)
    """Per-project limits in GiB, overriding the default (0: no limit)."""
    default_snapshots: int = 0
    """Snapshots a project may hold; 0 is no limit."""
    default_snapshot_gib: int = 0
    """GiB a project's snapshots may hold, each counted at its `size_gib`; 0 is no limit."""
    project_snapshots: Mapping[str, int] = field(default_factory=dict)
    """Per-project snapshot counts, overriding `default_snapshots`."""
    project_snapshot_gib: Mapping[str, int] = field(default_factory=dict)
    """Per-project snapshot GiB, overriding `default_snapshot_gib`."""
    default_shares: int = 0
    """Shares a project may hold; 0 is no limit."""
    project_shares: Mapping[str, int] = field(default_factory=dict)
    """Per-project share counts, overriding `default_shares`."""
    default_share_networks: int = 0
    """Share networks a project may hold; 0 is no limit."""
    project_share_networks: Mapping[str, int] = field(default_factory=dict)
    """Per-project share network counts, overriding `default_share_networks`."""

    def limit_gib(self, project: str) -> int:
        return int(self.projects.get(project, self.default_gib))

    def limit_snapshots(self, project: str) -> int:
        return int(self.project_snapshots.get(project, self.default_snapshots))

    def limit_snapshot_gib(self, project: str) -> int:
        return int(self.project_snapshot_gib.get(project, self.default_snapshot_gib))

    def limit_shares(self, project: str) -> int:
        return int(self.project_shares.get(project, self.default_shares))

    def limit_share_networks(self, project: str) -> int:
        return int(self.project_share_networks.get(project, self.default_share_networks))


@dataclass(frozen=True)
class MeshConfig:
    etcd: EtcdConfig = EtcdConfig()
    api: ApiConfig = ApiConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    backends: tuple[BackendConfig, ...] = ()
    gateway: GatewayConfig = GatewayConfig()
    quotas: QuotaConfig = QuotaConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    tls: TlsConfig = TlsConfig()
    operation_retention_seconds: float = 7 * 24 * 3600
    """How long a finished Operation, and the request id that made it, are kept."""
    export_id_quarantine_seconds: float = 3600.0
    """How long a deleted share's Ganesha Export_Id rests before another share gets it:
    clients may still hold file handles naming it."""
    reconcile_interval_seconds: float = 30.0
    """How often each service replays its watch caches for work a handler may have
    dropped (a safety net: watches do the work, and a resync reads no range of etcd)."""
    retry_deadline_seconds: float = 600.0
    """How long a change keeps retrying a transient fault (a restarting Ganesha, a peer
    or etcd down, a backend not registered yet), counted from the creation of the oldest
    operation waiting on it, before it fails with UNAVAILABLE."""
    log_level: str = "INFO"
    """Root log level of every service."""

    def backend(self, name: str) -> BackendConfig:
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise InvalidArgument("backend", f"no backend named {name!r} in the config")


def load(path: str | Path | None, env: Mapping[str, str] | None = None) -> MeshConfig:
    """Reads the file (if any), applies `SHAREMESH__…` overrides, and type-checks it all."""
    raw: dict[str, Any] = {}
    if path:
        with open(path, "rb") as f:
            # JSON for files the launcher resolves and writes, TOML for people.
            raw = json.load(f) if str(path).endswith(".json") else tomllib.load(f)
    for key, value in (os.environ if env is None else env).items():
        if key.startswith(ENV_PREFIX):
            _set_path(raw, key[len(ENV_PREFIX) :].lower().split("__"), value)
    return from_mapping(MeshConfig, raw)


def from_mapping(cls: type, raw: Mapping[str, Any], where: str = "") -> Any:
    """Builds dataclass `cls` from plain data, naming the field that is wrong."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise InvalidArgument(f"{where}{key}", "unknown setting")
    values = {name: _coerce(hints[name], raw[name], f"{where}{name}") for name in raw}
    try:
        return cls(**values)
    except TypeError as e:
        raise InvalidArgument(where.rstrip(".") or "config", str(e)) from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise InvalidArgument(where, "must be a table")
        return from_mapping(hint, value, f"{where}.")
    if origin is tuple:
        (item,) = typing.get_args(hint)[:1]
        if not isinstance(value, list | tuple):
            raise InvalidArgument(where, "must be a list")
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is bool:
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0"):
                raise InvalidArgument(where, "must be true or false")
            return value.lower() in ("true", "1")
        if not isinstance(value, bool):
            raise InvalidArgument(where, "must be true or false")
        return value
    if hint in (int, float):
        try:
            return hint(value)
        except (TypeError, ValueError):
            raise InvalidArgument(where, f"must be a {hint.__name__}") from None
    if hint is Path:
        return Path(value)
    if hint is str and not isinstance(value, str):
        raise InvalidArgument(where, "must be a string")
    return value


def _set_path(raw: dict[str, Any], path: list[str], value: str) -> None:
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InvalidArgument(".".join(path), "cannot override inside a list")
    node[path[-1]] = value


def split_host_port(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` into its parts."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidArgument("listen", f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)
