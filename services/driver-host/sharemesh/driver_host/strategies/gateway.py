"""A share on a share network, on a flat backend: the backend exports it to nobody (or,
for a proxying gateway, to the gateways' links), and the gateway on its host re-exports
it into the tenant network with the tenant's rules."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from google.protobuf import empty_pb2

from sharemesh import network
from sharemesh.runtime.coordination import Mutex, Versioned, keys
from sharemesh.runtime.errors import ShareMeshError, Unavailable
from sharemesh.state.v1 import records_pb2

from ..drivers import AccessRuleSpec, ExportLocation, ShareSpec, SnapshotSpec
from . import _records
from ._common import Backend, Rules, create_or_resize, export_on_backend

log = logging.getLogger(__name__)


class BehindGateway:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def realize(
        self,
        found: Versioned[records_pb2.ShareRecord],
        spec: ShareSpec,
        rules: Rules,
        lock: Mutex,
        source: SnapshotSpec | None = None,
    ) -> tuple[Versioned[records_pb2.ShareRecord], list[ExportLocation]]:
        """Done when the gateway has confirmed the export. How the gateway reaches the
        share is recorded (under `lock`) before it is asked, as it reads it from etcd."""
        store, driver, record = self._backend.store, self._backend.driver, found.value
        created = record.status.realized_size_gib == 0
        await create_or_resize(driver, record, spec, source)
        await export_on_backend(driver, spec, created, self.backend_rules(spec))
        # Asked again now that the backend has the share: where a native FSAL finds it
        # may only be known then (a CephFS subvolume's path).
        access = driver.gateway_access(spec)
        if not access.path:
            raise Unavailable(f"the backend does not know where share {spec.name} is yet")
        wanted = records_pb2.GatewayAccess(
            **{f.name: getattr(access, f.name) for f in dataclasses.fields(access)}
        )
        host = self._backend.host
        if record.status.gateway_access != wanted or record.status.host != host:
            txn = store.txn().fence(lock)
            if record.status.host and record.status.host != host:
                txn.delete(_records.host_index_key(store, record))
            record.status.gateway_access.CopyFrom(wanted)
            record.status.host = host
            txn.put(_records.host_index_key(store, record), empty_pb2.Empty())
            txn.put(found.key, record, found.mod_revision)
            found = Versioned(record, await txn.commit(), found.create_revision, found.key)
        await self._sync_gateway(record)
        gateway = await store.get(
            keys.network_server_key(
                store.root, "gateways", record.status.host, record.spec.share.share_network
            ),
            records_pb2.NetworkServerRecord,
        )
        if gateway is None:
            raise Unavailable(f"the gateway of {record.spec.share.share_network} is not up")
        return found, [ExportLocation(*network.location(gateway.value, record.spec.share.uid))]

    def backend_rules(self, spec: ShareSpec) -> list[AccessRuleSpec]:
        """Who the backend itself exports the share to: the gateways' storage links when
        they proxy its export (on any host: each host's links are a block of the range),
        else nobody; the tenants' rules apply at the gateways."""
        if self._backend.driver.gateway_access(spec).fsal != "PROXY_V4":
            return []
        return [AccessRuleSpec(str(network.STORAGE_RANGE), "READ_WRITE")]

    async def serve_network(self, record: records_pb2.ShareRecord, *, gone: bool = False) -> None:
        if record.status.HasField("gateway_access"):  # else no gateway was ever told of it
            await self._sync_gateway(record)

    async def tell(self, shares: list[Versioned[records_pb2.ShareRecord]]) -> None:
        """A gateway serves a share's filesystem only once it is mounted: after `ensure`
        mounted them again, each network's gateway syncs once."""
        told = set()
        for found in shares:
            record = found.value
            network_of = (record.status.host, record.spec.share.share_network)
            if not record.status.HasField("gateway_access") or network_of in told:
                continue
            told.add(network_of)
            try:
                await self._sync_gateway(record)
            except ShareMeshError as error:  # its own reconcile catches up
                log.info(
                    "gateway of %s not told: %s", record.spec.share.share_network, error.message
                )

    async def _sync_gateway(self, record: records_pb2.ShareRecord) -> None:
        """The gateway of the share's host, then those of the other hosts the network
        has guests on, which serve it too when it is offered across the network. A host
        whose gateway is down is passed over: it rebuilds from etcd before it registers."""
        store, share_network = self._backend.store, record.spec.share.share_network
        await self._backend.peers.sync_share_network(record.status.host, share_network)
        if not network.offered_across_hosts(record.status.gateway_access):
            return  # reachable from its own host only
        attachments, _ = await store.list_all(
            store.prefix_of(share_network, "attachments"), records_pb2.AttachmentRecord
        )
        others = {a.value.host for a in attachments} - {record.status.host}
        await asyncio.gather(*(self._sync_if_up(host, share_network) for host in sorted(others)))

    async def _sync_if_up(self, host: str, share_network: str) -> None:
        store = self._backend.store
        if await store.get(keys.host_key(store.root, host), records_pb2.HostRecord) is None:
            log.info("gateway of %s down; it catches up on %s when back", host, share_network)
            return
        await self._backend.peers.sync_share_network(host, share_network)
