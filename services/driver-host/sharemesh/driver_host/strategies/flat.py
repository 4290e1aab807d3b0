"""A flat share: the backend's own Ganesha exports it to the share's rules."""

from __future__ import annotations

from sharemesh.runtime.coordination import Mutex, Versioned
from sharemesh.state.v1 import records_pb2

from ..drivers import ExportLocation, ShareSpec, SnapshotSpec
from ._common import Backend, Rules, create_or_resize, rules_of


class Flat:
    def __init__(self, backend: Backend) -> None:
        self._driver = backend.driver

    async def realize(
        self,
        found: Versioned[records_pb2.ShareRecord],
        spec: ShareSpec,
        rules: Rules,
        lock: Mutex,
        source: SnapshotSpec | None = None,
    ) -> tuple[Versioned[records_pb2.ShareRecord], list[ExportLocation]]:
        desired = rules_of(rules)
        created = found.value.status.realized_size_gib == 0
        locations = await create_or_resize(self._driver, found.value, spec, source)
        if not created or desired:  # a new export already admits nobody
            await self._driver.update_access(spec, desired)
        return found, locations

    async def serve_network(self, record: records_pb2.ShareRecord, *, gone: bool = False) -> None:
        return None  # no tenant network: the backend's own export is all
