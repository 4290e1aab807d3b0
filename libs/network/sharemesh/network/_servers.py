"""Network servers: a Ganesha in a namespace of its own on a share network, exporting a
set of shares to the network's tenants. A host's gateway (mode 2) and a backend's share
server (mode 1) are both this; they differ only in who runs them (`kind`, `owner`).

The server's namespace, address, ports and export ids live in etcd, so a restart after
a crash adopts the running Ganesha or rebuilds it the same, and clients' locations and
file handles stay valid. Export ids are never reused."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import shutil
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sharemesh.ganesha import (
    Access,
    Export,
    Fsal,
    GaneshaInstance,
    ProxyV4Fsal,
    VfsFsal,
    client_rules,
    share_pseudo,
)
from sharemesh.runtime import export_ids, lifecycle, operations
from sharemesh.runtime.coordination import Store, Txn, Versioned, keys
from sharemesh.runtime.errors import Aborted, AlreadyExists, ResourceExhausted
from sharemesh.runtime.ports import free_port
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import access_rule_pb2

from . import _netns as netns_plugin
from . import _storage

log = logging.getLogger(__name__)

_NETNS_KIND = {"gateways": "gw", "shareServers": "ss"}


@dataclass(frozen=True)
class Served:
    """A share a network server exports: where its data is, and who may mount it."""

    uid: str
    path: str
    """VFS: the share's directory on this host; proxied: its path on the backend; a
    native FSAL: the export's path as that FSAL means it."""
    rules: tuple[tuple[str, Access], ...]
    proxy_port: int = 0
    """Non-zero: proxy (PROXY_V4) the NFS server on this host's port, through the
    server's storage leg, instead of reading the directory (VFS)."""
    proxy_generation: str = ""
    """The proxied server's incarnation: when it changes, the proxy must be rebuilt."""
    proxy_server: str = ""
    """The proxied server's address (on another host, routed through the storage leg);
    empty: this host, at the host end of the storage leg."""
    fsal: Fsal | None = None
    """A native FSAL straight to the backend's cluster (GLUSTER, CEPH), instead of VFS."""
    routes: tuple[str, ...] = ()
    """The cluster's addresses, routed through the server's storage leg."""
    ceph_conf: str = ""
    """CEPH: the cluster's ceph.conf on this host."""


def tenant_rules(rules: Iterable[records_pb2.AccessRuleRecord]) -> tuple[tuple[str, Access], ...]:
    """The (address or CIDR, access) pairs of a share's access rules in force."""
    rw = access_rule_pb2.AccessRule.READ_WRITE
    return tuple(
        (r.rule.access_to, "RW" if r.rule.access_level == rw else "RO")
        for r in rules
        if lifecycle.access_rule.in_force(r)
    )


def offered_across_hosts(access: records_pb2.GatewayAccess) -> bool:
    """Whether gateways on other hosts than the backend's reach the share: through the
    backend's NFS export on a routable address, or natively to a network file system's
    cluster; a VFS path is its own host's alone."""
    return (access.fsal == "PROXY_V4" and bool(access.server)) or access.fsal in (
        "CEPH",
        "GLUSTER",
    )


def location(server: records_pb2.NetworkServerRecord, uid: str) -> tuple[str, int, int]:
    """Where tenants mount a share the server exports: (`host:/pseudo`, nfs, mount port)."""
    address = server.address.split("/")[0]
    return f"{address}:{share_pseudo(uid)}", server.nfs_port, server.mount_port


async def release_servers(kind: str, state_dir: Path) -> None:
    """Stops every `kind` server whose files are under `state_dir` (its Ganesha and D-Bus
    daemon, by pidfile) and removes its namespace and the bridges it was on, from the
    host alone: for a service that died, when etcd (which names the servers) may be
    dead too. Export files stay, so the next start serves the same exports."""
    prefix = f"{netns_plugin.MESH_NETNS_PREFIX}{_NETNS_KIND[kind]}-"
    found = (
        sorted(d for d in state_dir.glob(f"{prefix}*") if d.is_dir()) if state_dir.is_dir() else []
    )
    for directory in found:
        netns = directory.name  # a server's files live in a directory named after its namespace
        await GaneshaInstance(directory, 0, 0, netns=netns).stop()
        bridges = await netns_plugin.bridges_of(netns)
        await netns_plugin.remove_namespace(netns)
        for bridge in bridges:
            await netns_plugin.remove_bridge(bridge)
        log.info("released the %s server in %s", kind, netns)


class NetworkServers:
    def __init__(
        self,
        store: Store,
        kind: str,
        owner: str,
        state_dir: Path,
        export_id_quarantine_seconds: float,
        storage_range: str = str(netns_plugin.STORAGE_RANGE),
    ) -> None:
        self._store = store
        self._legs = netns_plugin.storage_range(storage_range)
        self._export_id_quarantine = export_id_quarantine_seconds
        self._records = asyncio.Lock()
        self.kind = kind  # "gateways" or "shareServers"
        self.owner = owner
        self._state_dir = state_dir
        self._ganeshas: dict[str, GaneshaInstance] = {}
        self._supervisors: dict[str, asyncio.Task[None]] = {}
        # Per network, the incarnations of the servers its proxies were made against.
        self._proxied: dict[str, dict[str, str]] = {}
        self._endpoints: set[str] = set()
        """Networks whose shared gateway endpoint is known to exist."""

    def key(self, share_network: str) -> str:
        return keys.network_server_key(self._store.root, self.kind, self.owner, share_network)

    async def serve(
        self, share_network: str, shares: Sequence[Served], retained: Collection[str] = ()
    ) -> records_pb2.NetworkServerRecord | None:
        """Makes this owner's server on the network export exactly `shares`, returning
        once Ganesha has confirmed them; with no shares the server goes (Ganesha,
        namespace, address). Returns the server's record, or None when there is none.

        Shares that are not exported now but may come back (a delete that may yet be
        refused) are `retained` by uid: they keep their export ids, so clients' file
        handles stay good if they return."""
        shares, retained = _one_ceph_cluster(share_network, shares, retained)
        found = await self._store.get(self.key(share_network), records_pb2.NetworkServerRecord)
        if not shares:
            if found is not None:
                await self._remove(share_network, found)
            return None
        # One record change at a time: servers of different networks pick storage legs
        # from what the others hold.
        async with self._records:
            found = await self._record(
                share_network,
                found,
                [s.uid for s in shares],
                retained,
                legged=any(s.proxy_port or s.routes for s in shares),
            )
        server = found.value
        await netns_plugin.ensure_bridge(server.bridge)
        await netns_plugin.ensure_namespace(server.netns)
        await netns_plugin.join(server.bridge, server.netns, server.address)
        if server.storage_leg:
            leg = server.storage_leg - 1
            await netns_plugin.ensure_storage_leg(server.netns, leg, block=self._legs)
            await netns_plugin.ensure_storage_routes(
                server.netns, leg, {r for s in shares for r in s.routes}, block=self._legs
            )
        backend = netns_plugin.storage_addresses(max(server.storage_leg - 1, 0), self._legs)[0]
        ganesha = self._instance(share_network, server)
        ceph_conf = next((s.ceph_conf for s in shares if s.ceph_conf), "")
        if ceph_conf:  # read by libcephfs as each CEPH export is made
            await asyncio.to_thread(
                _storage.write_ceph_conf, ceph_conf, _ceph_conf(ganesha.state_dir)
            )
        proxied = {s.uid: s.proxy_generation for s in shares if s.proxy_port}
        made = self._proxied.get(share_network)
        stale = (
            (made is None and ganesha.adopt())
            if made is None
            else any(made.get(uid, generation) != generation for uid, generation in proxied.items())
        )
        if proxied and stale:
            # A proxy made against an earlier incarnation of its backend stays broken
            # (NFS4ERR_INVAL) until Ganesha restarts; one we adopt after our own restart
            # may have been made against anything, so it restarts too.
            log.info(
                "restarting the %s server of %s: its backends restarted", self.kind, share_network
            )
            await ganesha.stop()
        await ganesha.start()
        self._proxied[share_network] = proxied
        await ganesha.sync(
            [
                Export(
                    export_id=server.export_ids[s.uid],
                    path=s.path,
                    pseudo=share_pseudo(s.uid),
                    fsal=s.fsal
                    or (
                        ProxyV4Fsal(s.proxy_server or backend.split("/")[0], s.proxy_port)
                        if s.proxy_port
                        else VfsFsal()
                    ),
                    clients=client_rules(s.rules),
                )
                for s in shares
            ]
        )
        self._supervise(share_network, ganesha)
        return server

    async def owned(self) -> list[records_pb2.NetworkServerRecord]:
        found = await self._store.scan(
            keys.network_servers_prefix(self._store.root, self.kind, self.owner),
            records_pb2.NetworkServerRecord,
        )
        return [f.value for f in found]

    async def stop(self, stop_servers: bool) -> None:
        """Leaves servers serving unless the whole mesh is stopping (`stop_servers`);
        then each Ganesha stops and its namespace goes, to be rebuilt on the next start."""
        for task in self._supervisors.values():
            task.cancel()
        if not stop_servers:
            return
        for server in await self.owned():
            self._instance(server.share_network, server)
            await self._stop_instance(server.share_network)
            await netns_plugin.remove_namespace(server.netns)
            await netns_plugin.remove_bridge(server.bridge)

    async def _record(
        self,
        share_network: str,
        found: Versioned[records_pb2.NetworkServerRecord] | None,
        uids: list[str],
        retained: Collection[str],
        legged: bool,
    ) -> Versioned[records_pb2.NetworkServerRecord]:
        """The server's record, made once: namespace, an address from the network's range,
        stable ports, a storage leg once a share needs one (proxied, or on a cluster); and
        an export id for every share it serves, while the ids of shares that left go into
        quarantine."""
        key = self.key(share_network)
        txn = self._store.txn()
        if found is None:
            network = await self._store.get(
                self._store.key_of(share_network), records_pb2.ShareNetworkRecord
            )
            if network is None:
                raise ResourceExhausted(f"{share_network} does not exist")
            uid = network.value.share_network.uid
            server = records_pb2.NetworkServerRecord(
                share_network=share_network,
                owner=self.owner,
                bridge=netns_plugin.bridge_name(uid),
                netns=netns_plugin.netns_name(_NETNS_KIND[self.kind], f"{self.owner}/{uid}"),
            )
            if self.kind == "gateways":
                endpoint = await self._shared_endpoint(txn, network.value, None)
            else:
                endpoint = records_pb2.NetworkServerRecord(
                    address=await self._reserve_address(txn, network.value, server.netns),
                    nfs_port=free_port(),
                    mount_port=free_port(),
                )
            server.address = endpoint.address
            server.nfs_port, server.mount_port = endpoint.nfs_port, endpoint.mount_port
        else:
            server = found.value
            if self.kind == "gateways" and share_network not in self._endpoints:
                # A server made before endpoints were shared lends the network its own.
                await self._shared_endpoint(txn, None, server)
        missing = [uid for uid in uids if uid not in server.export_ids]
        gone = [uid for uid in server.export_ids if uid not in uids and uid not in retained]
        leg_missing = legged and not server.storage_leg
        if found is not None and not missing and not gone and not leg_missing:
            if self.kind == "gateways" and share_network not in self._endpoints:
                await self._commit(txn)  # the endpoint lent above
                self._endpoints.add(share_network)
            return found
        if leg_missing:
            used = {s.storage_leg for s in await self.owned()}
            server.storage_leg = next(i for i in range(1, len(used) + 2) if i not in used)
        now = operations.now()
        for uid in gone:  # the sync below withdraws their exports
            server.released_export_ids.append(export_ids.released(server.export_ids.pop(uid), now))
        for uid in missing:
            released = server.released_export_ids
            choice = export_ids.choose(
                server.last_export_id,
                released[0] if released else None,
                now,
                self._export_id_quarantine,
            )
            if choice.reused:
                del released[0]
            else:
                server.last_export_id = choice.export_id
            server.export_ids[uid] = choice.export_id
        if found is None:
            txn.create(key, server)
        else:
            txn.put(key, server, found.mod_revision)
        revision = await self._commit(txn)
        if self.kind == "gateways":
            self._endpoints.add(share_network)
        return Versioned(server, revision, found.create_revision if found else revision, key)

    async def _commit(self, txn: Txn) -> int:
        try:
            return await txn.commit()
        except AlreadyExists as race:
            # Another server (or attachment) took the address or made the record first.
            raise Aborted(str(race)) from None

    async def _shared_endpoint(
        self,
        txn: Txn,
        network: records_pb2.ShareNetworkRecord | None,
        existing: records_pb2.NetworkServerRecord | None,
    ) -> records_pb2.NetworkServerRecord:
        """The address and ports of every host's gateway on a network: one endpoint, so a
        share has one location wherever its tenants run (each host's bridge is its own,
        as a distributed router's gateway address is). Made by the first gateway (with
        `txn`), from `existing`'s when a server was made before endpoints were shared;
        it goes with the network."""
        source = network.share_network.name if network else None
        share_network = source or (existing.share_network if existing else "")
        key = keys.gateway_endpoint_key(self._store.root, share_network)
        found = await self._store.get(key, records_pb2.NetworkServerRecord)
        if found is not None:
            self._endpoints.add(share_network)
            return found.value
        if existing is not None:
            endpoint = records_pb2.NetworkServerRecord(
                share_network=share_network,
                address=existing.address,
                nfs_port=existing.nfs_port,
                mount_port=existing.mount_port,
            )
        else:
            assert network is not None
            endpoint = records_pb2.NetworkServerRecord(
                share_network=share_network,
                address=await self._reserve_address(txn, network, "gateways"),
                nfs_port=free_port(),
                mount_port=free_port(),
            )
        txn.create(key, endpoint)
        return endpoint

    async def _reserve_address(
        self, txn: Txn, network: records_pb2.ShareNetworkRecord, netns: str
    ) -> str:
        share_network = network.share_network.name
        cidr = ipaddress.ip_network(network.share_network.cidr)
        taken, _ = await self._store.list_all(
            keys.addresses_prefix(self._store.root, share_network), records_pb2.AttachmentRecord
        )
        used = {t.value.address.split("/")[0] for t in taken}
        for address in cidr.hosts():
            if str(address) not in used:
                cidr_form = f"{address}/{cidr.prefixlen}"
                # Created, not put: a race for the same address fails the whole txn.
                txn.create(
                    keys.address_key(self._store.root, share_network, str(address)),
                    records_pb2.AttachmentRecord(
                        share_network=share_network, netns=netns, address=cidr_form, host=self.owner
                    ),
                )
                return cidr_form
        raise ResourceExhausted(f"{share_network} has no free address for a server")

    def _instance(
        self, share_network: str, server: records_pb2.NetworkServerRecord
    ) -> GaneshaInstance:
        if share_network not in self._ganeshas:
            self._ganeshas[share_network] = GaneshaInstance(
                self._state_dir / server.netns,
                server.nfs_port,
                server.mount_port,
                netns=server.netns,
                bind_address=server.address.split("/")[0],
                # An orderly exit ends each Gluster volume's client first (~10 s); nothing
                # is lost by a kill: the exports come back from etcd, and it is graceless.
                stop_timeout=1.0,
                env={"CEPH_CONF": str(_ceph_conf(self._state_dir / server.netns))},
            )
        return self._ganeshas[share_network]

    def _supervise(self, share_network: str, ganesha: GaneshaInstance) -> None:
        task = self._supervisors.get(share_network)
        if task is None or task.done():
            self._supervisors[share_network] = asyncio.create_task(
                ganesha.supervise(), name=f"supervise {self.kind} {share_network}"
            )

    async def _stop_instance(self, share_network: str, for_good: bool = False) -> None:
        task = self._supervisors.pop(share_network, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        ganesha = self._ganeshas.pop(share_network, None)
        if ganesha is not None:
            await ganesha.stop(withdraw=for_good)

    async def _remove(
        self, share_network: str, found: Versioned[records_pb2.NetworkServerRecord]
    ) -> None:
        server = found.value
        self._instance(share_network, server)  # also one a crash left: it stops by pidfile
        await self._stop_instance(share_network, for_good=True)
        await netns_plugin.leave(server.bridge, server.netns)
        await netns_plugin.remove_namespace(server.netns)
        # A later server of this network starts afresh, not from these export files.
        await asyncio.to_thread(shutil.rmtree, self._state_dir / server.netns, True)
        txn = self._store.txn().delete(found.key, found.mod_revision)
        if self.kind != "gateways":  # a gateway's address is the network's, shared
            txn.delete(keys.address_key(self._store.root, share_network, server.address))
        await txn.commit()
        log.info("removed the %s server of %s on %s", self.kind, share_network, self.owner)


def _ceph_conf(state_dir: Path) -> Path:
    """The ceph.conf a server's Ganesha reads (`CEPH_CONF`), in its state directory."""
    return state_dir.absolute() / "ceph.conf"


def _one_ceph_cluster(
    share_network: str, shares: Sequence[Served], retained: Collection[str]
) -> tuple[list[Served], list[str]]:
    """Shares of a Ceph cluster other than the first one's wait (retained, keeping their
    export ids): a Ganesha's libcephfs reads one ceph.conf."""
    confs = sorted({s.ceph_conf for s in shares if s.ceph_conf})
    kept = [s for s in shares if s.ceph_conf in ("", *confs[:1])]
    waiting = [s.uid for s in shares if s not in kept]
    if waiting:
        log.error(
            "%s: shares %s are on another Ceph cluster than %s; one server serves one "
            "cluster, so they are not served here",
            share_network,
            ", ".join(waiting),
            confs[0],
        )
    return kept, [*retained, *waiting]
