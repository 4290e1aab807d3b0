"""`sharemesh up --hosts N`: a mesh of N hosts on one machine, as it runs across machines.

Each host (`_fabric.Host`) runs an etcd member of one N-member cluster and a gateway;
the first two hosts run the api and a scheduler each (one leads); a backend's
driver-host runs on the host its config names (`[[backends]] host`, default host-1).
Every service binds its host's address and finds the others through etcd
registrations, with mutual TLS from the mesh CA in `DIR/tls/`. A host's config
(`DIR/hosts/host-K/mesh.json`) names its own etcd member, its own files under
`DIR/hosts/host-K/`, and the same backends: the files the hosts share are the CA and
the admin key, which an operator copies to each machine.

Ports are fixed (each host has its own port space), so addresses and export
locations stay the same from one `up` to the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sys
import tomllib
from pathlib import Path
from typing import Any

from sharemesh.runtime import certs, tls
from sharemesh.runtime import config as mesh_config
from sharemesh.runtime.coordination import connect, keys, leader
from sharemesh.runtime.health import wait_serving

from ._children import Child
from ._fabric import Fabric, Host
from ._mesh import DEFAULT_API_PORT, Running, ensure_admin_token
from .etcd_server import EtcdServer, EtcdTls, Membership

log = logging.getLogger(__name__)

API_HOSTS = 2
"""Hosts that run the api and a scheduler: the first two."""
ETCD_CLIENT_PORT, ETCD_PEER_PORT, ETCD_METRICS_PORT = 2379, 2380, 2381
SCHEDULER_PORT, GATEWAY_PORT, FIRST_DRIVER_HOST_PORT = 8471, 8472, 8480
FIRST_NFS_PORT = 20490
FIRST_PROBE_PORT, FIRST_METRICS_PORT = 8570, 9570
_STOP_ORDER = ("api", "scheduler", "driver-host", "gateway")


class HostsMesh(Running):
    """`async with HostsMesh(state_dir, hosts=3, ...) as mesh:` runs it until the block
    ends; `kill_host`, `start_host` and `restart_host` act on one host meanwhile."""

    def __init__(
        self,
        state_dir: Path,
        hosts: int = 3,
        config_file: Path | None = None,
        api_port: int = DEFAULT_API_PORT,
        lease_ttl_seconds: int | None = None,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.fabric = Fabric(self.state_dir, hosts)
        self._config_file = config_file
        self._api_port = api_port or DEFAULT_API_PORT
        self._lease_ttl = lease_ttl_seconds
        self.etcd: dict[str, EtcdServer] = {}
        self.children: dict[str, dict[str, Child]] = {}
        """Each host's service processes, by host name then child name."""
        self.probes: dict[str, str] = {}
        """Each child's plaintext health address, by `child@host`."""
        self._supervisors: dict[str, asyncio.Task[None]] = {}
        self._started = False
        self._root = mesh_config.EtcdConfig.prefix

    # ---- what clients need ---------------------------------------------------------

    @property
    def hosts(self) -> list[Host]:
        return self.fabric.hosts

    @property
    def api_addresses(self) -> list[str]:
        return [f"{h.address}:{self._api_port}" for h in self.hosts[:API_HOSTS]]

    @property
    def api_address(self) -> str:
        return self.api_addresses[0]

    @property
    def ca_file(self) -> str:
        """The mesh CA, which the public API's certificate chains to."""
        return str(self.ca.cert_file)

    @property
    def admin_token(self) -> str:
        return (self.state_dir / "admin.token").read_text().strip()

    @functools.cached_property
    def ca(self) -> certs.MeshCA:
        return certs.MeshCA(self.state_dir / "tls")

    def operator(self) -> tls.Identity:
        """The launcher's own identity, for reads of etcd and calls to services."""
        return self._identity("operator", None)

    def identity(self, service: str, host: str) -> tls.Identity:
        """The TLS files of `service` on `host` (`api`, `gateway`, … on `host-2`)."""
        return self._identity(service, self.fabric.host(host))

    async def scheduler_leader(self) -> str | None:
        """The host whose scheduler leads, read from a living etcd member."""
        for host in self.hosts:
            etcd = self.etcd[host.name]
            if not etcd.running:
                continue
            with contextlib.suppress(Exception):
                async with connect(etcd.endpoint, timeout=2.0, identity=self.operator()) as c:
                    value = await leader(c, keys.election_prefix(self._root, "scheduler"))
                if value is None:
                    return None
                address = value.decode().rsplit(":", 1)[0]
                return next(h.name for h in self.hosts if h.address == address)
        return None

    # ---- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        ensure_admin_token(self.state_dir)
        self._started = True
        await self.fabric.up()
        raw = self._user_config()
        self._root = raw.get("etcd", {}).get("prefix", mesh_config.EtcdConfig.prefix)
        cluster = ",".join(f"{h.name}=https://{h.address}:{ETCD_PEER_PORT}" for h in self.hosts)
        for host in self.hosts:
            self.etcd[host.name] = self._etcd_member(host, cluster)
            await self.etcd[host.name].start(wait=False)
        await asyncio.gather(*(e.wait_healthy() for e in self.etcd.values()))
        for host in self.hosts:
            self._supervise_etcd(host.name)
            self.children[host.name] = self._host_children(host, raw)
        for host in self.hosts:
            await self._start_children(host.name)
        await self._wait_serving(self.hosts)

    async def stop(self) -> None:
        """The apis first (no new work), then every other service, then etcd, then the
        hosts' Ganesha servers and namespaces, and the network."""
        for kind in _STOP_ORDER:
            await asyncio.gather(
                *(
                    child.stop()
                    for children in self.children.values()
                    for name, child in children.items()
                    if name.startswith(kind)
                )
            )
        # Gateways let go first: their Ganesha servers proxy the backends' exports.
        for kind in ("gateway", "driver-host"):
            for children in self.children.values():
                for name, child in children.items():
                    if name.startswith(kind):
                        await child.release()
        for task in self._supervisors.values():
            task.cancel()
        for etcd in self.etcd.values():
            await etcd.stop()
        if self._started:
            await self.fabric.down()

    async def kill_host(self, name: str) -> None:
        """kill -9 every process of a host: its services, its etcd member, and the
        Ganesha servers its gateway and driver-hosts run in namespaces of their own."""
        host = self.fabric.host(name)
        await asyncio.gather(*(child.kill() for child in self.children[name].values()))
        self._unsupervise_etcd(name)
        await self.etcd[name].kill()
        for server_dir in self._server_dirs(host):
            await self.fabric.kill_processes(server_dir.name)
        await self.fabric.kill_processes(host.netns)
        log.warning("killed every process of %s", name)

    async def start_host(self, name: str) -> None:
        """Brings a host back: its etcd member rejoins from its data, then its services
        start and rebuild what their host serves from etcd."""
        host = self.fabric.host(name)
        await self.etcd[name].start()
        self._supervise_etcd(name)
        await self._start_children(name)
        await self._wait_serving([host])

    async def restart_host(self, name: str) -> None:
        """A host's share of a rolling restart: each service in turn, then its etcd
        member, each stopped in order and started again, waiting for it to serve.
        Ganesha servers are not the services': tenants go on being served throughout."""
        host = self.fabric.host(name)
        for kind in _STOP_ORDER:
            for child_name, child in self.children[name].items():
                if child_name.startswith(kind):
                    await child.stop()
                    await child.start()
                    await wait_serving(self.probes[f"{child_name}@{name}"], timeout=60)
        self._unsupervise_etcd(name)
        await self.etcd[name].stop()
        await self.etcd[name].start()
        self._supervise_etcd(name)
        await self._wait_serving([host])

    # ---- pieces --------------------------------------------------------------------

    def _identity(
        self, service: str, host: Host | None, role: str | None = None, everywhere: bool = False
    ) -> tls.Identity:
        """`service@host`'s TLS files, naming its host's address (or, `everywhere`, every
        host's: a client of several etcd members checks each against the first's)."""
        name = f"{service}@{host.name}" if host else service
        addresses = (
            [h.address for h in self.hosts] if everywhere else [host.address] if host else []
        )
        where = (*certs.LOOPBACK, *addresses)
        leaf = certs.Leaf(name, role or certs.role_of(service), where)
        cert_file, key_file = self.ca.ensure(leaf)
        return tls.Identity(str(self.ca.cert_file), str(cert_file), str(key_file))

    def _etcd_member(self, host: Host, cluster: str) -> EtcdServer:
        server = self._identity("etcd-server", host, everywhere=True)
        peer = self._identity("etcd-peer", host)
        etcd = EtcdServer(
            host.state_dir / "etcd",
            client_port=ETCD_CLIENT_PORT,
            peer_port=ETCD_PEER_PORT,
            name=host.name,
            tls=EtcdTls(
                ca_file=Path(server.ca_file),
                cert_file=Path(server.cert_file),
                key_file=Path(server.key_file),
                peer_cert_file=Path(peer.cert_file),
                peer_key_file=Path(peer.key_file),
                client=self.operator(),
            ),
            member=Membership(host.address, host.netns, cluster, f"sharemesh-{self.fabric.tag}"),
        )
        etcd.metrics_port = ETCD_METRICS_PORT
        return etcd

    def _unsupervise_etcd(self, name: str) -> None:
        task = self._supervisors.pop(name, None)
        if task:
            task.cancel()

    def _supervise_etcd(self, name: str) -> None:
        self._supervisors[name] = asyncio.create_task(
            self.etcd[name].supervise(), name=f"watch-etcd-{name}"
        )

    def _user_config(self) -> dict[str, Any]:
        if not self._config_file:
            return {}
        with open(self._config_file, "rb") as f:
            return tomllib.load(f)

    def _host_config(self, host: Host, user: dict[str, Any]) -> dict[str, Any]:
        """The user's config as this host runs it: its etcd member, its addresses, its
        files; the backends as everyone sees them (each where its host is)."""
        raw = json.loads(json.dumps(user))  # a deep copy
        etcd = raw.setdefault("etcd", {})
        # Its own member first; the others when that one is away (a restart, a crash).
        members = [host, *[h for h in self.hosts if h is not host]]
        etcd["endpoint"] = ",".join(f"https://{h.address}:{ETCD_CLIENT_PORT}" for h in members)
        if self._lease_ttl:
            etcd["lease_ttl_seconds"] = self._lease_ttl
        raw.setdefault("tls", {})["ca_file"] = str(self.ca.cert_file)
        api = self._identity("api", host)
        raw.setdefault("api", {}).update(
            listen=f"{host.address}:{self._api_port}",
            admin_token_file=str(self.state_dir / "admin.token"),
            tls_cert_file=api.cert_file,
            tls_key_file=api.key_file,
        )
        raw.setdefault("scheduler", {})["listen"] = f"{host.address}:{SCHEDULER_PORT}"
        raw.setdefault("gateway", {}).update(
            host=host.name,
            listen=f"{host.address}:{GATEWAY_PORT}",
            state_dir=str(host.state_dir / "gateway"),
            storage_range=host.storage_range,
        )
        backends = raw.setdefault("backends", [])
        if not backends:
            backends.append({"name": "local", "driver": "local", "options": {"capacity_gib": 50}})
        for i, backend in enumerate(backends):
            home = self.fabric.host(backend.setdefault("host", self.hosts[0].name))
            backend["listen"] = f"{home.address}:{FIRST_DRIVER_HOST_PORT + i}"
            options = backend.setdefault("options", {})
            driver = backend.get("driver", "local")
            pools = home.state_dir / "pools" / backend["name"]
            if driver != "fake":
                backend.setdefault("state_dir", str(pools / "servers"))
                options.setdefault("state_dir", str(pools / "ganesha"))
                options.setdefault("nfs_port", FIRST_NFS_PORT + 2 * i)
                options.setdefault("mount_port", FIRST_NFS_PORT + 2 * i + 1)
                options.setdefault("host", home.address)
            if driver == "local":
                options.setdefault("pool_dir", str(pools))
                # Gateways on other hosts reach its shares through its NFS export; its own
                # host's gateway does the same, so every host serves them alike.
                options.setdefault("gateway_fsal", "PROXY_V4")
        return raw

    def _host_children(self, host: Host, user: dict[str, Any]) -> dict[str, Child]:
        raw = self._host_config(host, user)
        resolved = host.state_dir / "mesh.json"
        resolved.write_text(json.dumps(raw, indent=2))
        config = mesh_config.load(resolved, env={})
        py, cfg = sys.executable, ["--config", str(resolved)]
        logs = self.state_dir / "logs"
        children: dict[str, Child] = {}

        def child(name: str, argv: list[str], release_argv: list[str] | None = None) -> None:
            identity = self._identity(name, host, certs.role_of(name))
            port = len(children)
            probe = f"{host.address}:{FIRST_PROBE_PORT + port}"
            self.probes[f"{name}@{host.name}"] = probe
            env = {
                f"{mesh_config.ENV_PREFIX}TLS__CERT_FILE": identity.cert_file,
                f"{mesh_config.ENV_PREFIX}TLS__KEY_FILE": identity.key_file,
                f"{mesh_config.ENV_PREFIX}TLS__PROBE_LISTEN": probe,
                f"{mesh_config.ENV_PREFIX}TELEMETRY__METRICS_LISTEN": (
                    f"{host.address}:{FIRST_METRICS_PORT + port}"
                ),
            }
            log_file = logs / f"{name}@{host.name}.log"
            children[name] = Child(name, argv, log_file, env, release_argv, netns=host.netns)

        # Servers are not the services': a service restarted alone (a rolling restart)
        # adopts what serves; the mesh's stop releases them (`Child.release`).
        if host.index <= API_HOSTS:
            child("scheduler", [py, "-m", "sharemesh.scheduler", *cfg])
        for backend in config.backends:
            if backend.host == host.name:
                argv = [py, "-m", "sharemesh.driver_host", *cfg, "--backend", backend.name]
                child(f"driver-host-{backend.name}", argv, [*argv, "--release"])
        gateway = [py, "-m", "sharemesh.gateway", *cfg]
        child("gateway", gateway, [*gateway, "--release"])
        if host.index <= API_HOSTS:
            child("api", [py, "-m", "sharemesh.api", *cfg])
        return children

    async def _start_children(self, name: str) -> None:
        children = self.children[name]
        for child in [c for n, c in children.items() if n != "api"]:
            await child.start()
        if "api" in children:  # last: when it answers, what it nudges is there
            await children["api"].start()

    async def _wait_serving(self, hosts: list[Host]) -> None:
        root = self.ca.cert_file.read_bytes()
        waits = []
        for host in hosts:
            for name in self.children[host.name]:
                waits.append(wait_serving(self.probes[f"{name}@{host.name}"], timeout=90))
            if host.index <= API_HOSTS:
                address = f"{host.address}:{self._api_port}"
                waits.append(wait_serving(address, timeout=90, root_certificates=root))
        await asyncio.gather(*waits)

    def _server_dirs(self, host: Host) -> list[Path]:
        """The state directories of the Ganesha servers a host runs in namespaces of their
        own (each named after its namespace)."""
        return [
            d
            for parent in (host.state_dir / "gateway", host.state_dir / "pools")
            if parent.is_dir()
            for d in parent.rglob("sm-*")
            if d.is_dir()
        ]
