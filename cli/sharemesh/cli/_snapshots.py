"""`sharemesh snapshot …` and `sharemesh share revert`: a share's snapshots."""

from __future__ import annotations

import argparse

from sharemesh.client import Client
from sharemesh.v1 import share_pb2, snapshot_pb2
from sharemesh.v1 import share_service_pb2 as ss

from . import _output
from ._base import UsageError, child_name, finish, run, share_name
from ._shares import SHARE_COLUMNS

Snapshot = snapshot_pb2.Snapshot
SNAPSHOT_COLUMNS = [
    "name",
    "size_gib",
    "state",
    "state_message",
    "export_locations",
    "labels",
    "create_time",
    "etag",
]


def snapshot_name(args: argparse.Namespace, value: str, share: str = "") -> str:
    """A full snapshot name, or SHARE/SNAPSHOT ids (or a SNAPSHOT id of `share`)."""
    if share and "/" not in value:
        return f"{share_name(args, share)}/snapshots/{value}"
    return child_name(args, value, "snapshots", "snapshot")


def _labels(pairs: list[str] | None) -> dict[str, str]:
    labels = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--label takes KEY=VALUE, not {pair!r}")
        labels[key] = value
    return labels


async def snapshot_create(c: Client, args: argparse.Namespace) -> None:
    op = await c.call(
        c.shares.CreateSnapshot,
        ss.CreateSnapshotRequest(
            parent=share_name(args, args.share),
            snapshot_id=args.id,
            snapshot=Snapshot(description=args.description or "", labels=_labels(args.label)),
            request_id=args.request_id or "",
        ),
    )
    await finish(c, args, op, Snapshot, SNAPSHOT_COLUMNS)


async def snapshot_list(c: Client, args: argparse.Namespace) -> None:
    snapshots, token = [], ""
    while True:
        page = await c.call(
            c.shares.ListSnapshots,
            ss.ListSnapshotsRequest(parent=share_name(args, args.share), page_token=token),
        )
        snapshots += page.snapshots
        token = page.next_page_token
        if not token:
            break
    _output.table(args, snapshots, ["name", "size_gib", "state", "create_time"])


async def snapshot_show(c: Client, args: argparse.Namespace) -> None:
    name = snapshot_name(args, args.name)
    snapshot = await c.call(c.shares.GetSnapshot, ss.GetSnapshotRequest(name=name))
    _output.show(args, snapshot, SNAPSHOT_COLUMNS)


async def snapshot_delete(c: Client, args: argparse.Namespace) -> None:
    name = snapshot_name(args, args.name)
    op = await c.call(c.shares.DeleteSnapshot, ss.DeleteSnapshotRequest(name=name))
    await finish(c, args, op, None, [], done=f"deleted {name}")


async def share_revert(c: Client, args: argparse.Namespace) -> None:
    op = await c.call(
        c.shares.RevertShare,
        ss.RevertShareRequest(
            name=share_name(args, args.name),
            snapshot=snapshot_name(args, args.snapshot, share=args.name),
            request_id=args.request_id or "",
        ),
    )
    await finish(c, args, op, share_pb2.Share, SHARE_COLUMNS)


def add_parsers(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    share: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    p = share.add_parser(
        "revert", parents=[common], help="put a share's data back as its latest snapshot has it"
    )
    p.add_argument("name", help="projects/P/shares/S, or S in the project")
    p.add_argument("--snapshot", required=True, help="its latest snapshot: a name or an id")
    p.add_argument("--request-id", help="makes a retry safe")
    p.set_defaults(run=run(share_revert))

    snapshot = commands.add_parser("snapshot", help="snapshots of shares").add_subparsers(
        dest="verb", required=True, metavar="VERB"
    )
    p = snapshot.add_parser("create", parents=[common], help="take a snapshot of a share")
    p.add_argument("share", help="projects/P/shares/S, or S in the project")
    p.add_argument("id", help="the snapshot's id")
    p.add_argument("--description", help="free text")
    p.add_argument("--label", action="append", metavar="KEY=VALUE", help="a label (repeatable)")
    p.add_argument("--request-id", help="makes a retry safe")
    p.set_defaults(run=run(snapshot_create))
    p = snapshot.add_parser("list", parents=[common], help="list a share's snapshots")
    p.add_argument("share", help="projects/P/shares/S, or S in the project")
    p.set_defaults(run=run(snapshot_list))
    for verb, action in (("show", snapshot_show), ("delete", snapshot_delete)):
        p = snapshot.add_parser(verb, parents=[common], help=f"{verb} a snapshot")
        p.add_argument("name", help="projects/P/shares/S/snapshots/X, or S/X in the project")
        p.set_defaults(run=run(action))
