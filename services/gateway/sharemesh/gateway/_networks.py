"""Making this host's part of a share network true to etcd: the network's bridge, the
namespaces attached to it, and the gateway, a Ganesha in a namespace of its own on the
network that re-exports the network's shares to its tenants with their access rules.

Everything here is idempotent: a nudge, the periodic reconcile and a restart after a
crash all run `sync`, which rebuilds what is missing from etcd and removes the rest."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from pathlib import Path

from sharemesh import network
from sharemesh.ganesha import (
    Export,
    GaneshaInstance,
    ProxyV4Fsal,
    VfsFsal,
    client_rules,
    share_pseudo,
)
from sharemesh.runtime import operations
from sharemesh.runtime.coordination import Store, Versioned, keys
from sharemesh.runtime.errors import Aborted, ResourceExhausted
from sharemesh.runtime.ports import free_port
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import access_rule_pb2, share_network_pb2

log = logging.getLogger(__name__)

Attachment = share_network_pb2.Attachment
ShareNetwork = share_network_pb2.ShareNetwork
_ATTEMPTS = 8


class Networks:
    def __init__(self, store: Store, host: str, state_dir: Path) -> None:
        self._store = store
        self.host = host
        self._state_dir = state_dir
        self._locks: dict[str, asyncio.Lock] = {}
        self._ganeshas: dict[str, GaneshaInstance] = {}
        self._supervisors: dict[str, asyncio.Task[None]] = {}

    async def sync(self, name: str) -> None:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            for _ in range(_ATTEMPTS):
                try:
                    await self._sync_once(name)
                    return
                except Aborted as race:
                    log.debug("sync of %s raced (%s); again", name, race)

    async def _sync_once(self, name: str) -> None:
        found = await self._store.get(self._store.key_of(name), records_pb2.ShareNetworkRecord)
        going = found is None or found.value.delete_requested
        bridge = network.bridge_name(name)
        attachments, _ = await self._store.list_all(
            self._store.prefix_of(name, "attachments"), records_pb2.AttachmentRecord
        )
        mine = [a for a in attachments if a.value.host == self.host]
        for attachment in mine:
            await self._sync_attachment(bridge, attachment, going)
        shares = [] if going else await self._gateway_shares(name)
        await self._sync_gateway(name, bridge, shares)
        if going:
            await network.remove_bridge(bridge)
            if found is not None:
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
        await network.join(bridge, record.netns, record.address)
        if record.attachment.state != Attachment.ACTIVE or record.pending_operations:
            pending = list(record.pending_operations)
            del record.pending_operations[:]
            record.attachment.state = Attachment.ACTIVE
            txn = self._store.txn().put(found.key, record, found.mod_revision)
            await operations.finish_pending(self._store, txn, pending, response=record.attachment)
            await txn.commit()
            log.info("plugged %s into %s as %s", record.netns, record.share_network, record.address)

    async def _gateway_shares(self, name: str) -> list[records_pb2.ShareRecord]:
        """The network's shares this host's gateway serves: realized on a flat backend of
        this host, and not being deleted."""
        shares = await self._store.scan(self._store.root + "shares/", records_pb2.ShareRecord)
        return [
            s.value
            for s in shares
            if s.value.share.share_network == name
            and s.value.host == self.host
            and s.value.HasField("gateway_access")
            and not s.value.delete_requested
        ]

    async def _sync_gateway(
        self, name: str, bridge: str, shares: list[records_pb2.ShareRecord]
    ) -> None:
        key = keys.gateway_key(self._store.root, self.host, name)
        found = await self._store.get(key, records_pb2.GatewayRecord)
        if not shares:
            if found is not None:
                await self._remove_gateway(name, bridge, found)
            return
        found = await self._gateway_record(name, key, found, shares)
        gateway = found.value
        await network.ensure_bridge(bridge)
        await network.ensure_namespace(gateway.netns)
        await network.join(bridge, gateway.netns, gateway.address)
        ganesha = self._instance(name, gateway)
        await ganesha.start()
        exports = []
        for share in shares:
            rules, _ = await self._store.list_all(
                self._store.prefix_of(share.share.name, "accessRules"), records_pb2.AccessRuleRecord
            )
            access = share.gateway_access
            fsal = (
                ProxyV4Fsal(access.server, access.nfs_port)
                if access.fsal == "PROXY_V4"
                else VfsFsal()
            )
            exports.append(
                Export(
                    export_id=gateway.export_ids[share.share.uid],
                    path=access.path,
                    pseudo=share_pseudo(share.share.uid),
                    fsal=fsal,
                    clients=client_rules(
                        (
                            r.value.rule.access_to,
                            "RW"
                            if r.value.rule.access_level == access_rule_pb2.AccessRule.READ_WRITE
                            else "RO",
                        )
                        for r in rules
                        if not r.value.delete_requested
                    ),
                )
            )
        await ganesha.sync(exports)
        self._supervise(name, ganesha)

    async def _gateway_record(
        self,
        name: str,
        key: str,
        found: Versioned[records_pb2.GatewayRecord] | None,
        shares: list[records_pb2.ShareRecord],
    ) -> Versioned[records_pb2.GatewayRecord]:
        """This host's gateway on the network, made once: its namespace, an address from
        the network's range, stable ports, and an export id per share (never reused)."""
        txn = self._store.txn()
        if found is None:
            gateway = records_pb2.GatewayRecord(
                share_network=name,
                host=self.host,
                netns=network.netns_name("gw", f"{self.host}/{name}"),
                nfs_port=free_port(),
                mount_port=free_port(),
            )
            gateway.address = await self._reserve_address(txn, name, gateway.netns)
            txn.create(key, gateway)
        else:
            gateway = found.value
            txn.put(key, gateway, found.mod_revision)
        missing = [s.share.uid for s in shares if s.share.uid not in gateway.export_ids]
        if found is not None and not missing:
            return found
        for uid in missing:
            gateway.last_export_id += 1
            gateway.export_ids[uid] = gateway.last_export_id
        revision = await txn.commit()
        return Versioned(gateway, revision, found.create_revision if found else revision, key)

    async def _reserve_address(self, txn, name: str, netns: str) -> str:  # type: ignore[no-untyped-def]
        record = await self._store.get(self._store.key_of(name), records_pb2.ShareNetworkRecord)
        assert record is not None
        cidr = ipaddress.ip_network(record.value.share_network.cidr)
        taken, _ = await self._store.list_all(
            keys.addresses_prefix(self._store.root, name), records_pb2.AttachmentRecord
        )
        used = {t.value.address.split("/")[0] for t in taken}
        for address in cidr.hosts():
            if str(address) not in used:
                cidr_form = f"{address}/{cidr.prefixlen}"
                txn.create(
                    keys.address_key(self._store.root, name, str(address)),
                    records_pb2.AttachmentRecord(
                        share_network=name, netns=netns, address=cidr_form, host=self.host
                    ),
                )
                return cidr_form
        raise ResourceExhausted(f"{name} has no free address for a gateway")

    def _instance(self, name: str, gateway: records_pb2.GatewayRecord) -> GaneshaInstance:
        if name not in self._ganeshas:
            self._ganeshas[name] = GaneshaInstance(
                self._state_dir / gateway.netns,
                gateway.nfs_port,
                gateway.mount_port,
                netns=gateway.netns,
                bind_address=gateway.address.split("/")[0],
            )
        return self._ganeshas[name]

    def _supervise(self, name: str, ganesha: GaneshaInstance) -> None:
        task = self._supervisors.get(name)
        if task is None or task.done():
            self._supervisors[name] = asyncio.create_task(
                ganesha.supervise(), name=f"supervise gateway {name}"
            )

    async def _stop_instance(self, name: str) -> None:
        task = self._supervisors.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        ganesha = self._ganeshas.pop(name, None)
        if ganesha is not None:
            await ganesha.stop()

    async def _remove_gateway(
        self, name: str, bridge: str, found: Versioned[records_pb2.GatewayRecord]
    ) -> None:
        gateway = found.value
        self._instance(name, gateway)  # also one a crash left running: it stops by pidfile
        await self._stop_instance(name)
        await network.leave(bridge, gateway.netns)
        await network.remove_namespace(gateway.netns)
        txn = self._store.txn().delete(found.key, found.mod_revision)
        txn.delete(keys.address_key(self._store.root, name, gateway.address))
        await txn.commit()
        log.info("removed the gateway of %s on %s", name, self.host)

    async def _finish_delete(self, found: Versioned[records_pb2.ShareNetworkRecord]) -> None:
        """The network goes once no host has anything of it left."""
        name = found.value.share_network.name
        left, _ = await self._store.list_all(
            self._store.prefix_of(name, "attachments"), records_pb2.AttachmentRecord
        )
        addresses, _ = await self._store.list_all(
            keys.addresses_prefix(self._store.root, name), records_pb2.AttachmentRecord
        )
        if left or addresses:
            return
        txn = self._store.txn().delete(found.key, found.mod_revision)
        await operations.finish_pending(self._store, txn, found.value.pending_operations)
        await txn.commit()
        log.info("deleted %s", name)

    async def networks_here(self) -> set[str]:
        """Networks this host has something of, or that wait to be deleted."""
        wanted: set[str] = set()
        for attachment in await self._store.scan(
            self._store.root + "attachments/", records_pb2.AttachmentRecord
        ):
            if attachment.value.host == self.host:
                wanted.add(attachment.value.share_network)
        for gateway in await self._store.scan(
            f"{self._store.root}gateways/{self.host}/", records_pb2.GatewayRecord
        ):
            wanted.add(gateway.value.share_network)
        for share in await self._store.scan(self._store.root + "shares/", records_pb2.ShareRecord):
            if share.value.host == self.host and share.value.share.share_network:
                wanted.add(share.value.share.share_network)
        for net in await self._store.scan(
            self._store.root + "shareNetworks/", records_pb2.ShareNetworkRecord
        ):
            if net.value.delete_requested:
                wanted.add(net.value.share_network.name)
        return wanted

    async def stop(self, stop_servers: bool) -> None:
        """Leaves gateways serving unless the whole mesh is stopping (`stop_servers`);
        then Ganesha stops and namespaces, veths and bridges go, to be rebuilt on start."""
        for task in self._supervisors.values():
            task.cancel()
        if not stop_servers:
            return
        for gateway in await self._store.scan(
            f"{self._store.root}gateways/{self.host}/", records_pb2.GatewayRecord
        ):
            self._instance(gateway.value.share_network, gateway.value)
            await self._stop_instance(gateway.value.share_network)
            await network.remove_namespace(gateway.value.netns)
        for attachment in await self._store.scan(
            self._store.root + "attachments/", records_pb2.AttachmentRecord
        ):
            if attachment.value.host == self.host:
                await network.leave(
                    network.bridge_name(attachment.value.share_network), attachment.value.netns
                )
        for name in await self.networks_here():
            await network.remove_bridge(network.bridge_name(name))
