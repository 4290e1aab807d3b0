"""A revert's intent: written once the share's reverted image is ready, removed once the
share serves it. It holds the snapshot and the share's clients, which a repeat after a
crash needs while the share's export is withdrawn (its export file is gone then)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sharemesh.ganesha import ClientRule


def read_intent(intent: Path) -> tuple[str, tuple[ClientRule, ...]] | None:
    try:
        held = json.loads(intent.read_text())
    except FileNotFoundError:
        return None
    clients = tuple(ClientRule(tuple(names), access) for names, access in held["clients"])
    return held["snapshot_id"], clients


def write_intent(intent: Path, snapshot_id: str, clients: tuple[ClientRule, ...]) -> None:
    tmp = intent.with_name(f"{intent.name}.tmp")
    tmp.write_text(json.dumps({"snapshot_id": snapshot_id, "clients": clients}))
    os.replace(tmp, intent)
