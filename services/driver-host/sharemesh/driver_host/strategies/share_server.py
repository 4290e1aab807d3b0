"""A share on a share network, on a backend that handles share servers: the backend's
own server on that network exports it (set up with the network's first share, torn
down with its last); its flat export admits nobody."""

from __future__ import annotations

import asyncio
import logging

from google.protobuf import empty_pb2

from sharemesh import network
from sharemesh.runtime import controllers, lifecycle
from sharemesh.runtime.coordination import Mutex, Versioned, keys
from sharemesh.runtime.errors import ShareMeshError
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_pb2

from ..drivers import ExportLocation, ShareSpec, SnapshotSpec
from ._common import Backend, Rules, create_or_resize, export_on_backend, spec_of

log = logging.getLogger(__name__)

Share = share_pb2.Share


class OnShareServer:
    def __init__(self, backend: Backend, servers: network.NetworkServers) -> None:
        self._backend = backend
        self._servers = servers
        self._network_locks: dict[str, asyncio.Lock] = {}

    async def realize(
        self,
        found: Versioned[records_pb2.ShareRecord],
        spec: ShareSpec,
        rules: Rules,
        lock: Mutex,
        source: SnapshotSpec | None = None,
    ) -> tuple[Versioned[records_pb2.ShareRecord], list[ExportLocation]]:
        record = found.value
        created = record.status.realized_size_gib == 0
        await create_or_resize(self._backend.driver, record, spec, source)
        await export_on_backend(self._backend.driver, spec, created, [])
        server = await self._serve(record.spec.share.share_network, record, making=True)
        assert server is not None
        return found, [ExportLocation(*network.location(server, record.spec.share.uid))]

    async def serve_network(self, record: records_pb2.ShareRecord, *, gone: bool = False) -> None:
        await self._serve(record.spec.share.share_network, None if gone else record)

    async def serve_all(self, shares: list[Versioned[records_pb2.ShareRecord]]) -> None:
        """Every share server of this backend made true: after a restart (a server the
        mesh stopped is rebuilt, one that died unseen is restarted and supervised), and
        on each reconcile (a server no share needs any more goes)."""
        networks = {
            s.value.spec.share.share_network for s in shares if s.value.spec.share.share_network
        }
        networks |= {server.share_network for server in await self._servers.owned()}
        for share_network in sorted(networks):
            try:
                await self._serve(share_network)
            except ShareMeshError as error:
                log.warning("share server of %s not in order: %s", share_network, error.message)

    async def _serve(
        self,
        share_network: str,
        current: records_pb2.ShareRecord | None = None,
        *,
        making: bool = False,
    ) -> records_pb2.NetworkServerRecord | None:
        """Makes this backend's share server on the network export exactly its live
        shares there (with `current` as the syncing share's record, served if it is
        being `making`); none left tears the server down."""
        # One network at a time: each sync builds the server's whole export set, so two
        # at once could each drop the share the other is adding.
        async with self._network_locks.setdefault(share_network, asyncio.Lock()):
            return await self._serve_locked(share_network, current, making)

    async def _shares_on(
        self, share_network: str, including: records_pb2.ShareRecord | None
    ) -> list[records_pb2.ShareRecord]:
        """This backend's shares on the network, found through the index placement
        wrote (never a range over the mesh), and `including` as given."""
        store, backend = self._backend.store, self._backend
        shares = [] if including is None else [including]
        indexed, _ = await controllers.list_prefix(
            store,
            keys.backend_index_prefix(store.root, backend.short_name, share_network),
            empty_pb2.Empty,
        )
        for index in indexed:
            name = keys.share_of_index_key(index.key)
            if including is not None and name == including.spec.share.name:
                continue
            found = await store.get(store.key_of(name), records_pb2.ShareRecord)
            if found is not None and found.value.placement.backend == backend.name:
                shares.append(found.value)
        return shares

    async def _serve_locked(
        self, share_network: str, current: records_pb2.ShareRecord | None, making: bool
    ) -> records_pb2.NetworkServerRecord | None:
        store = self._backend.store
        server = await store.get(self._servers.key(share_network), records_pb2.NetworkServerRecord)
        exported = set(server.value.export_ids) if server else set()
        served, retained = [], []
        for share in await self._shares_on(share_network, current):
            if making and share is current:
                pass
            elif lifecycle.share.state(share) == Share.DELETING or not (
                # Realized, or being made by another sync that got here first (not one
                # whose create failed: its filesystem is gone).
                share.status.realized_size_gib
                or (
                    share.spec.share.uid in exported
                    and lifecycle.share.state(share) == Share.CREATING
                )
            ):
                retained.append(share.spec.share.uid)  # not served now; its id stays its own
                continue
            rules, _ = await store.list_all(
                store.prefix_of(share.spec.share.name, "accessRules"), records_pb2.AccessRuleRecord
            )
            path = self._backend.driver.gateway_access(spec_of(share)).path
            served.append(
                network.Served(
                    share.spec.share.uid, path, network.tenant_rules(r.value for r in rules)
                )
            )
        return await self._servers.serve(share_network, served, retained)
