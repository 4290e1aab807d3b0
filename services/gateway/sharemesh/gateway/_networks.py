"""Making this host's part of a share network true to etcd: the network's bridge, the
namespaces attached to it, and the gateway (mode 2): a network server that re-exports
the network's shares from flat backends, with their tenants' rules. It serves the
shares of this host's backends however they are reached, and those of other hosts'
backends that offer themselves across the network (their NFS export, PROXY_V4), so a
tenant on any host mounts through its own host's gateway, on the network's one
gateway endpoint.

Everything here is idempotent: a nudge, a watched change, the periodic reconcile and a
restart after a crash all run `sync`, which rebuilds what is missing from etcd and
removes the rest. What this host has of which network comes from watches (its
attachments, networks being deleted) and its own keys, never a range over the mesh."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from google.protobuf import empty_pb2

from sharemesh import network
from sharemesh.ganesha import CephFsal, Fsal, GlusterFsal
from sharemesh.runtime import controllers, lifecycle, operations
from sharemesh.runtime.coordination import Store, Versioned, keys
from sharemesh.runtime.errors import Aborted, ShareMeshError
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_network_pb2, share_pb2

log = logging.getLogger(__name__)

Attachment = share_network_pb2.Attachment
Share = share_pb2.Share
_ATTEMPTS = 8


def _native_fsal(access: records_pb2.GatewayAccess) -> Fsal | None:
    """FSAL_GLUSTER or FSAL_CEPH straight to the backend's cluster; None for VFS and
    PROXY_V4, which the server makes itself."""
    if access.fsal == "GLUSTER":
        return GlusterFsal(access.server, access.volume, access.volpath)
    if access.fsal == "CEPH":
        return CephFsal(access.filesystem, access.user_id, access.secret_access_key)
    return None


class Networks:
    def __init__(
        self,
        store: Store,
        host: str,
        state_dir: Path,
        export_id_quarantine_seconds: float,
        backends: tuple[str, ...] = (),
        storage_range: str = str(network.STORAGE_RANGE),
    ) -> None:
        self._store = store
        self.host = host
        self._backends = backends
        self.gateways = network.NetworkServers(
            store, "gateways", host, state_dir, export_id_quarantine_seconds, storage_range
        )
        self._locks: dict[str, asyncio.Lock] = {}
        self.attachments = controllers.Informer(
            store,
            store.root + "attachments/",
            records_pb2.AttachmentRecord,
            keep=lambda record: record.host == host,
            name=f"attachments on {host}",
        )
        self.going = controllers.Informer(
            store,
            store.root + "shareNetworks/",
            records_pb2.ShareNetworkRecord,
            keep=lambda record: record.delete_requested,
            name="share networks being deleted",
        )

    async def sync(self, name: str) -> None:
        async with self._locks.setdefault(name, asyncio.Lock()):
            for _ in range(_ATTEMPTS):
                try:
                    await self._sync_once(name)
                    return
                except Aborted as race:
                    log.debug("sync of %s raced (%s); again", name, race)

    async def _sync_once(self, name: str) -> None:
        found = await self._store.get(self._store.key_of(name), records_pb2.ShareNetworkRecord)
        going = found is None or found.value.delete_requested
        if found is None:
            # Gone while this host was away: what it still runs of it goes too.
            await self.gateways.serve(name, [], [])
            return
        bridge = network.bridge_name(found.value.share_network.uid)
        attachments, _ = await self._store.list_all(
            self._store.prefix_of(name, "attachments"), records_pb2.AttachmentRecord
        )
        for attachment in attachments:
            if attachment.value.host == self.host:
                try:
                    await self._sync_attachment(bridge, attachment, going)
                except Aborted:
                    raise
                except ShareMeshError as error:  # that attachment's problem, not the network's
                    await self._attachment_failed(attachment, error)
        served, retained = ([], []) if going else await self._served(name)
        await self.gateways.serve(name, served, retained)
        if going:
            await network.remove_bridge(bridge)
            await self._finish_delete(found)

    async def _sync_attachment(
        self, bridge: str, found: Versioned[records_pb2.AttachmentRecord], going: bool
    ) -> None:
        record = found.value
        if going or record.delete_requested:
            await network.leave(bridge, record.netns)
            txn = self._store.txn().delete(found.key, found.mod_revision)
            txn.delete(keys.address_key(self._store.root, record.share_network, record.address))
            await operations.finish_pending(self._store, txn, record.pending_operations)
            await txn.commit()
            log.info("unplugged %s from %s", record.netns, record.share_network)
            return
        await network.ensure_bridge(bridge)
        await network.join(
            bridge, record.netns, record.address, ifname=network.member_ifname(bridge)
        )
        if record.attachment.state != Attachment.ACTIVE or record.pending_operations:
            pending = list(record.pending_operations)
            del record.pending_operations[:]
            record.attachment.state = Attachment.ACTIVE
            txn = self._store.txn().put(found.key, record, found.mod_revision)
            await operations.finish_pending(self._store, txn, pending, response=record.attachment)
            await txn.commit()
            log.info("plugged %s into %s as %s", record.netns, record.share_network, record.address)

    async def _attachment_failed(
        self, found: Versioned[records_pb2.AttachmentRecord], error: ShareMeshError
    ) -> None:
        """An attachment that cannot be plugged in (say, its namespace does not exist)
        ends in ERROR with the reason; deleting it still works."""
        record = found.value
        log.warning(
            "could not plug %s into %s: %s", record.netns, record.share_network, error.message
        )
        if record.attachment.state == Attachment.ERROR and not record.pending_operations:
            return
        pending = list(record.pending_operations)
        del record.pending_operations[:]
        record.attachment.state = Attachment.ERROR
        record.attachment.state_message = error.message
        txn = self._store.txn().put(found.key, record, found.mod_revision)
        await operations.finish_pending(self._store, txn, pending, error=error)
        await txn.commit()

    async def _served(self, name: str) -> tuple[list[network.Served], list[str]]:
        """The network's shares this host's gateway serves: handed over by their
        driver-host (`gateway_access`), reachable from here (on this host, or offered
        across the network), mounted, not failed and not being deleted; and the uids of
        the others, which keep their export ids until their records are gone."""
        served: list[network.Served] = []
        retained: list[str] = []
        for found in await self._shares_of(name):
            share = found.value
            state = lifecycle.share.state(share)
            if share.spec.share.share_network != name or not share.status.HasField(
                "gateway_access"
            ):
                continue
            access = share.status.gateway_access
            if share.status.host != self.host and not network.offered_across_hosts(access):
                continue  # on another host, which alone can reach it
            if (
                state == Share.DELETING
                or (state == Share.ERROR and not share.status.realized_size_gib)
                # Not mounted (yet, or any more): an export would serve the empty
                # directory beneath, and tenants' writes would land on the host.
                or (access.fsal == "VFS" and not os.path.ismount(access.path))
            ):
                retained.append(share.spec.share.uid)
                continue
            rules, _ = await self._store.list_all(
                self._store.prefix_of(share.spec.share.name, "accessRules"),
                records_pb2.AccessRuleRecord,
            )
            served.append(
                network.Served(
                    share.spec.share.uid,
                    access.path,
                    network.tenant_rules(r.value for r in rules),
                    proxy_port=access.nfs_port if access.fsal == "PROXY_V4" else 0,
                    proxy_generation=access.server_generation,
                    proxy_server=access.server if access.fsal == "PROXY_V4" else "",
                    fsal=_native_fsal(access),
                    routes=tuple(access.routes),
                    ceph_conf=access.ceph_conf if access.fsal == "CEPH" else "",
                )
            )
        return served, retained

    async def _shares_of(self, share_network: str) -> list[Versioned[records_pb2.ShareRecord]]:
        """Every share of a network, on this host's backends or others': the backends'
        indexes (one range per backend) and this host's, for a backend it does not know."""
        prefixes = [keys.host_index_prefix(self._store.root, self.host, share_network)]
        prefixes += [
            keys.backend_index_prefix(self._store.root, backend, share_network)
            for backend in self._backends
        ]
        names: dict[str, None] = {}
        for prefix in prefixes:
            indexed, _ = await controllers.list_prefix(self._store, prefix, empty_pb2.Empty)
            names.update((keys.share_of_index_key(index.key), None) for index in indexed)
        shares = []
        for share in names:
            found = await self._store.get(self._store.key_of(share), records_pb2.ShareRecord)
            if found is not None:
                shares.append(found)
        return shares

    async def _finish_delete(self, found: Versioned[records_pb2.ShareNetworkRecord]) -> None:
        """The network goes once nothing of it is left anywhere: no attachment, and no
        reserved address but its gateway endpoint's (every share server has gone; each
        host's gateway removes its own as it syncs). The endpoint goes with it."""
        name = found.value.share_network.name
        left, _ = await self._store.list_all(
            self._store.prefix_of(name, "attachments"), records_pb2.AttachmentRecord
        )
        addresses, _ = await self._store.list_all(
            keys.addresses_prefix(self._store.root, name), records_pb2.AttachmentRecord
        )
        endpoint_key = keys.gateway_endpoint_key(self._store.root, name)
        endpoint = await self._store.get(endpoint_key, records_pb2.NetworkServerRecord)
        shared = endpoint.value.address if endpoint else None
        if left or any(a.value.address != shared for a in addresses):
            return
        txn = self._store.txn().delete(found.key, found.mod_revision)
        if endpoint is not None:
            txn.delete(endpoint_key, endpoint.mod_revision)
            txn.delete(keys.address_key(self._store.root, name, endpoint.value.address))
        await operations.finish_pending(self._store, txn, found.value.pending_operations)
        await txn.commit()
        log.info("deleted %s", name)

    async def networks_here(self) -> set[str]:
        """Networks this host has something of, or that wait to be deleted: its own
        servers and index keys, and what the watches hold."""
        wanted = {g.share_network for g in await self.gateways.owned()}
        wanted.update(a.value.share_network for a in self.attachments.items())
        prefix = keys.host_index_prefix(self._store.root, self.host)
        indexed, _ = await controllers.list_prefix(self._store, prefix, empty_pb2.Empty)
        for index in indexed:  # {prefix}{share network}/{share}: the network, no read
            network_and_share = index.key.removeprefix(prefix).split("/")
            if len(network_and_share) > 4:
                wanted.add("/".join(network_and_share[:-4]))
        wanted.update(n.value.share_network.name for n in self.going.items())
        return wanted

    async def stop(self, stop_servers: bool) -> None:
        """Leaves gateways serving unless the whole mesh is stopping (`stop_servers`);
        then Ganesha stops and namespaces, veths and bridges go, to be rebuilt on start."""
        await self.gateways.stop(stop_servers)
        if not stop_servers:
            return
        for name in await self.networks_here():
            found = await self._store.get(self._store.key_of(name), records_pb2.ShareNetworkRecord)
            if found is not None:
                # Removing the bridge removes the attachments' host ends with it.
                await network.remove_bridge(network.bridge_name(found.value.share_network.uid))
