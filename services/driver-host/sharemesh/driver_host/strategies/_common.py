"""What the strategies share: the backend they act on, their interface, and the steps
every one of them takes on the backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sharemesh.runtime import lifecycle
from sharemesh.runtime.coordination import Mutex, Store, Versioned
from sharemesh.runtime.peers import Peers
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import access_rule_pb2

from ..drivers import AccessRuleSpec, Driver, ExportLocation, ShareSpec, SnapshotSpec

AccessRule = access_rule_pb2.AccessRule
Rules = list[Versioned[records_pb2.AccessRuleRecord]]


@dataclass(frozen=True)
class Backend:
    """The backend this driver-host serves, and what its strategies reach through."""

    store: Store
    driver: Driver
    name: str  # `backends/{name}`
    host: str  # the host it (and its gateway) runs on
    peers: Peers

    @property
    def short_name(self) -> str:
        return self.name.split("/")[-1]


class Strategy(Protocol):
    async def realize(
        self,
        found: Versioned[records_pb2.ShareRecord],
        spec: ShareSpec,
        rules: Rules,
        lock: Mutex,
        source: SnapshotSpec | None = None,
    ) -> tuple[Versioned[records_pb2.ShareRecord], list[ExportLocation]]:
        """Makes the share exist at its size (from `source`, a snapshot, if it is new and
        made from one), served to its rules; returns its record
        (as written, if the strategy wrote it under `lock`) and the export locations to
        record (none: keep the recorded ones)."""
        ...

    async def serve_network(self, record: records_pb2.ShareRecord, *, gone: bool = False) -> None:
        """Has whoever serves the share on its tenant network serve what etcd says now
        (`record` as it is, unless it is `gone` from etcd); nothing for a flat share."""
        ...


def spec_of(record: records_pb2.ShareRecord) -> ShareSpec:
    return ShareSpec(
        share_id=record.spec.share.uid,
        name=record.spec.share.name,
        size_gib=lifecycle.share.size_of(record),
        pool=record.placement.pool.rsplit("/", 1)[-1],
        export_id=record.export_id,
        thick=record.placement.thick_provisioned,
    )


def rules_of(rules: Rules) -> list[AccessRuleSpec]:
    """The rule set to apply: every rule but those being deleted or failed."""
    return [
        AccessRuleSpec(
            r.value.rule.access_to,
            AccessRule.AccessLevel.Name(r.value.rule.access_level),  # type: ignore[arg-type]
        )
        for r in rules
        if lifecycle.access_rule.in_force(r.value)
    ]


async def create_or_resize(
    driver: Driver,
    record: records_pb2.ShareRecord,
    spec: ShareSpec,
    source: SnapshotSpec | None = None,
) -> list[ExportLocation]:
    """Makes the share on the backend (a copy of `source`, if given), or grows or shrinks
    it to its recorded size; returns the backend's export locations when it made it."""
    if record.status.realized_size_gib == 0:
        if source is not None:
            return await driver.create_share_from_snapshot(spec, source)
        return await driver.create_share(spec)
    if spec.size_gib != record.status.realized_size_gib:
        await driver.resize_share(spec, spec.size_gib)
        lifecycle.share.resized(record)  # for real: a later failure must not undo it
    return []


async def export_on_backend(
    driver: Driver, spec: ShareSpec, created: bool, rules: list[AccessRuleSpec]
) -> None:
    """The backend's side of a share served on a share network: mounted, and exported
    to `rules` (the gateways' links, or nobody). A new share is that already; one that
    existed is made so every time, because a share reset to ACTIVE after a failed
    delete may be neither, and the server would re-export an empty directory."""
    if not created or rules:
        await driver.update_access(spec, rules)
