"""The local mesh: etcd plus every service on one machine, from one config file.

The launcher resolves the user's config into `DIR/mesh.json` (ports, paths, the etcd
endpoint), which every child reads, so operators can see exactly what runs.
Ports chosen once are kept in `DIR/ports.json`, so export locations survive a restart.
Each child serves its metrics on a port of its own; `DIR/metrics.json` says where.
Inside, everything is mutual TLS: the mesh CA and a certificate per child, etcd and the
launcher itself (`operator`) live in `DIR/tls/`, made on first start and kept. Health
answers without a certificate only on each child's loopback probe port (`DIR/probes.json`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from sharemesh.runtime import certs, tls
from sharemesh.runtime import config as mesh_config
from sharemesh.runtime.health import wait_serving
from sharemesh.runtime.ports import free_port, reserve

from ._children import Child
from .etcd_server import EtcdServer, EtcdTls

log = logging.getLogger(__name__)
# A gateway storage range for the meshes this process starts whose config names none:
# parallel test workers on one machine each take a block of their own.
STORAGE_RANGE_ENV = "SHAREMESH_STORAGE_RANGE"

DEFAULT_API_PORT = 8470
DEFAULT_CAPACITY_GIB = 50


def ensure_admin_token(state_dir: Path) -> None:
    """`DIR/admin.token`, made once (mode 0600): the admin's bearer key."""
    token = state_dir / "admin.token"
    if not token.exists():
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")


class Running:
    """`async with mesh:` starts it, and stops it at the end of the block or if the
    start fails half-way (`stop` must undo a partial start)."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class LocalMesh(Running):
    """`async with LocalMesh(...) as mesh:` runs the whole mesh until the block ends."""

    def __init__(
        self,
        state_dir: Path,
        config_file: Path | None = None,
        api_port: int = DEFAULT_API_PORT,
        lease_ttl_seconds: int | None = None,
        schedulers: int = 1,
        metrics: bool = True,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self._metrics_on = metrics
        # Standby schedulers listen on ports of their own; only the leader places.
        self._standby_schedulers = {
            f"scheduler-{i}": f"127.0.0.1:{free_port()}" for i in range(2, schedulers + 1)
        }
        self._config_file = config_file
        self._api_port = api_port
        self._lease_ttl = lease_ttl_seconds
        self.etcd: EtcdServer | None = None
        self._etcd_watch: asyncio.Task[None] | None = None
        self.children: dict[str, Child] = {}
        self.config: mesh_config.MeshConfig | None = None
        self.metrics: dict[str, str] = {}
        """Each child's metrics URL (Prometheus text), by child name; none with
        `metrics=False`."""
        self._probes: dict[str, str] = {}

    @property
    def api_address(self) -> str:
        assert self.config is not None
        return self.config.api.listen

    @property
    def admin_token(self) -> str:
        return (self.state_dir / "admin.token").read_text().strip()

    async def start(self) -> None:
        for sub in ("etcd", "logs", "pools"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        ensure_admin_token(self.state_dir)
        raw = self._resolve()
        raw.setdefault("tls", {})["ca_file"] = str(self.ca.cert_file)
        self.etcd = EtcdServer(
            self.state_dir / "etcd",
            client_port=self.etcd_ports[0],
            peer_port=self.etcd_ports[1],
            tls=self._etcd_tls(),
            # One member has no peer to hear from: a slower tick halves its idle CPU
            # (0.62 -> 0.36 s a minute) for about half a second more at start.
            extra_args=("--heartbeat-interval=500", "--election-timeout=2500"),
        )
        await self.etcd.start()
        self._etcd_watch = asyncio.create_task(self.etcd.supervise(), name="watch-etcd")
        raw["etcd"]["endpoint"] = self.etcd.endpoint
        resolved = self.state_dir / "mesh.json"
        tmp = resolved.with_suffix(".tmp")
        tmp.write_text(json.dumps(raw, indent=2))
        tmp.replace(resolved)
        self.config = mesh_config.load(resolved, env={})
        self.children = self._children(resolved)
        (self.state_dir / "metrics.json").write_text(json.dumps(self.metrics, indent=2))
        (self.state_dir / "probes.json").write_text(json.dumps(self._probes, indent=2))
        log.info("metrics (Prometheus text): %s", self.metrics)
        # The api goes last, so that when it answers the services it nudges are there.
        for child in self.children.values():
            await child.start()
        api = self.config.api
        api_root = Path(api.tls_cert_file).read_bytes() if api.tls_cert_file else None
        await asyncio.gather(
            wait_serving(api.listen, timeout=60, root_certificates=api_root),
            *(wait_serving(address, timeout=60) for address in self.probe_addresses().values()),
        )

    async def stop(self) -> None:
        """Stops the api first (no new work), then the schedulers, the gateway (its
        Ganesha servers read the driver-hosts' mounts), the driver-hosts, then etcd. A
        service that is down (etcd may be dead too) has what it held released without
        etcd."""
        for kind in ("api", "scheduler", "gateway", "driver-host"):
            for name, child in self.children.items():
                if name.startswith(kind):
                    await child.stop()
        if self._etcd_watch:
            self._etcd_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._etcd_watch
        if self.etcd:
            await self.etcd.stop()

    def addresses(self) -> dict[str, str]:
        """Every service's gRPC address, by child name."""
        assert self.config is not None
        addresses = {
            "api": self.config.api.listen,
            "scheduler": self.config.scheduler.listen,
            **self._standby_schedulers,
            "gateway": self.config.gateway.listen,
        }
        for backend in self.config.backends:
            addresses[f"driver-host-{backend.name}"] = backend.listen
        return addresses

    def probe_addresses(self) -> dict[str, str]:
        """Each child's plaintext loopback health port (its gRPC port wants a mesh
        certificate), by child name."""
        return dict(self._probes)

    @functools.cached_property
    def ca(self) -> certs.MeshCA:
        """The mesh CA in `DIR/tls/`, created on first use."""
        return certs.MeshCA(self.state_dir / "tls")

    def identity(self, name: str, hosts: Sequence[str] = ()) -> tls.Identity:
        """The TLS files of a child (or `operator`, the launcher's own), issued if new or
        if they do not name `hosts` (addresses beyond loopback it listens on)."""
        leaf = certs.Leaf(name, certs.role_of(name), (*certs.LOOPBACK, *hosts))
        cert_file, key_file = self.ca.ensure(leaf)
        return tls.Identity(str(self.ca.cert_file), str(cert_file), str(key_file))

    def rotate_certificate(self, name: str) -> tls.Identity:
        """A new key and certificate for `name` from the same CA: servers take it at
        their next handshake, clients when they next connect; nothing restarts."""
        self.ca.issue(certs.Leaf(name, certs.role_of(name)))
        return self.identity(name)

    def _etcd_tls(self) -> EtcdTls:
        server = self.identity("etcd-server")
        peer = self.identity("etcd-peer")
        return EtcdTls(
            ca_file=Path(server.ca_file),
            cert_file=Path(server.cert_file),
            key_file=Path(server.key_file),
            peer_cert_file=Path(peer.cert_file),
            peer_key_file=Path(peer.key_file),
            client=self.identity("operator"),
        )

    def _children(self, resolved: Path) -> dict[str, Child]:
        assert self.config is not None
        logs = self.state_dir / "logs"
        py = sys.executable
        cfg = ["--config", str(resolved)]

        def child(name: str, argv: list[str], release_argv: list[str] | None = None) -> Child:
            env = {}
            if self._metrics_on:
                # One config for all: each child's own metrics port comes by environment.
                listen = self._metrics_listen[name]
                self.metrics[name] = f"http://{listen}/metrics"
                env[f"{mesh_config.ENV_PREFIX}TELEMETRY__METRICS_LISTEN"] = listen
            # Its own certificate (the CA is in mesh.json), and a health port for probes.
            identity = self.identity(name)
            self._probes[name] = f"127.0.0.1:{free_port()}"
            env[f"{mesh_config.ENV_PREFIX}TLS__CERT_FILE"] = identity.cert_file
            env[f"{mesh_config.ENV_PREFIX}TLS__KEY_FILE"] = identity.key_file
            env[f"{mesh_config.ENV_PREFIX}TLS__PROBE_LISTEN"] = self._probes[name]
            return Child(name, argv, logs / f"{name}.log", env, release_argv)

        children = {"scheduler": child("scheduler", [py, "-m", "sharemesh.scheduler", *cfg])}
        for name, listen in self._standby_schedulers.items():
            children[name] = child(
                name, [py, "-m", "sharemesh.scheduler", *cfg, "--listen", listen]
            )
        for backend in self.config.backends:
            name = f"driver-host-{backend.name}"
            argv = [py, "-m", "sharemesh.driver_host", *cfg, "--backend", backend.name]
            children[name] = child(name, [*argv, "--own-servers"], [*argv, "--release"])
        gateway = [py, "-m", "sharemesh.gateway", *cfg]
        children["gateway"] = child("gateway", [*gateway, "--own-servers"], [*gateway, "--release"])
        children["api"] = child("api", [py, "-m", "sharemesh.api", *cfg])
        return children

    def _resolve(self) -> dict[str, Any]:
        """The user's config with every port and path filled in; ports kept from the last run."""
        raw: dict[str, Any] = {}
        if self._config_file:
            with open(self._config_file, "rb") as f:
                raw = tomllib.load(f)
        ports_file = self.state_dir / "ports.json"
        kept = json.loads(ports_file.read_text()) if ports_file.exists() else {}
        for kept_port in kept.values():
            reserve(int(kept_port))  # before any new pick can land on one

        def port(key: str) -> int:
            if key not in kept:
                kept[key] = free_port()
            return int(kept[key])

        raw.setdefault("etcd", {})
        if self._lease_ttl:
            raw["etcd"]["lease_ttl_seconds"] = self._lease_ttl
        api_port = self._api_port or port("api")
        raw.setdefault("api", {})["listen"] = f"127.0.0.1:{api_port}"
        raw["api"]["admin_token_file"] = str(self.state_dir / "admin.token")
        raw.setdefault("scheduler", {})["listen"] = f"127.0.0.1:{free_port()}"
        raw.setdefault("gateway", {})["listen"] = f"127.0.0.1:{free_port()}"
        raw["gateway"].setdefault("state_dir", str(self.state_dir / "gateway"))
        if block := os.environ.get(STORAGE_RANGE_ENV):
            raw["gateway"].setdefault("storage_range", block)
        backends = raw.setdefault("backends", [])
        if not backends:
            backends.append(
                {
                    "name": "local",
                    "driver": "local",
                    "options": {"capacity_gib": DEFAULT_CAPACITY_GIB},
                }
            )
        for backend in backends:
            backend["listen"] = f"127.0.0.1:{free_port()}"
            options = backend.setdefault("options", {})
            driver = backend.get("driver", "local")
            home = self.state_dir / "pools" / backend["name"]
            if driver != "fake":  # every real backend runs its own Ganesha
                backend.setdefault("state_dir", str(home / "servers"))
                options.setdefault("state_dir", str(home / "ganesha"))
                options.setdefault("nfs_port", port(f"{backend['name']}_nfs"))
                options.setdefault("mount_port", port(f"{backend['name']}_mount"))
            if driver == "local":
                options.setdefault("pool_dir", str(home))
        self.etcd_ports = (port("etcd_client"), port("etcd_peer"))
        services = ["api", "scheduler", *self._standby_schedulers, "gateway"]
        services += [f"driver-host-{backend['name']}" for backend in backends]
        # Kept across restarts, like the other ports: a Prometheus config stays right.
        self._metrics_listen = {name: f"127.0.0.1:{port(f'metrics_{name}')}" for name in services}
        ports_file.write_text(json.dumps(kept, indent=2))
        return raw
