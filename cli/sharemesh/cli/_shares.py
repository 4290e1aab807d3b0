"""`sharemesh share …` and `sharemesh access …`: the tenant's commands, noun then verb."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf import field_mask_pb2, json_format, message

from sharemesh.client import Client, OperationFailed
from sharemesh.runtime.errors import from_rpc_error
from sharemesh.v1 import access_rule_pb2, share_pb2
from sharemesh.v1 import share_service_pb2 as ss

Share = share_pb2.Share
AccessRule = access_rule_pb2.AccessRule
LEVELS = {"rw": AccessRule.READ_WRITE, "ro": AccessRule.READ_ONLY}


def qualify(args: argparse.Namespace, value: str, collection: str) -> str:
    """A full resource name from a full one, or from an id plus --project."""
    return value if "/" in value else f"projects/{_project(args)}/{collection}/{value}"


def _share_name(args: argparse.Namespace, value: str) -> str:
    return qualify(args, value, "shares")


def _project(args: argparse.Namespace) -> str:
    project = args.project or os.environ.get("SHAREMESH_PROJECT", "")
    if not project:
        raise SystemExit("error: name a project with --project or SHAREMESH_PROJECT")
    return project


def _print(args: argparse.Namespace, item: message.Message, columns: list[str]) -> None:
    data = json_format.MessageToDict(item, preserving_proto_field_name=True)
    if args.json:
        print(json.dumps(data, indent=2))
        return
    for column in columns:
        value = data.get(column, "")
        if column == "export_locations" and value:
            value = ", ".join(
                f"{e['path']} (nfs {e.get('nfs_port')}, mount {e.get('mount_port')})" for e in value
            )
        print(f"{column:18} {value}")


def _table(rows: list[message.Message], columns: list[str], as_json: bool) -> None:
    data = [json_format.MessageToDict(r, preserving_proto_field_name=True) for r in rows]
    if as_json:
        print(json.dumps(data, indent=2))
        return
    widths = [max([len(c)] + [len(str(d.get(c, ""))) for d in data]) for c in columns]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)))
    for d in data:
        print("  ".join(str(d.get(c, "")).ljust(w) for c, w in zip(columns, widths)))


SHARE_COLUMNS = [
    "name",
    "size_gib",
    "state",
    "state_message",
    "share_type",
    "pool",
    "export_locations",
    "create_time",
    "etag",
]
RULE_COLUMNS = ["name", "access_to", "access_level", "state", "state_message"]


async def share_create(c: Client, args: argparse.Namespace) -> None:
    share = Share(
        size_gib=args.size or 0,
        share_type=args.type or "",
        share_network=qualify(args, args.network, "shareNetworks") if args.network else "",
        source_snapshot=args.from_snapshot or "",
    )
    op = await c.call(
        c.shares.CreateShare,
        ss.CreateShareRequest(
            parent=f"projects/{_project(args)}",
            share_id=args.id,
            share=share,
            request_id=args.request_id or "",
        ),
    )
    _print(args, await c.wait(op, Share) if args.wait else op, SHARE_COLUMNS)


async def share_list(c: Client, args: argparse.Namespace) -> None:
    shares, token = [], ""
    while True:
        page = await c.call(
            c.shares.ListShares,
            ss.ListSharesRequest(
                parent=f"projects/{_project(args)}", page_token=token, filter=args.filter or ""
            ),
        )
        shares += page.shares
        token = page.next_page_token
        if not token:
            break
    _table(shares, ["name", "size_gib", "state", "pool"], args.json)


async def share_show(c: Client, args: argparse.Namespace) -> None:
    _print(
        args,
        await c.call(c.shares.GetShare, ss.GetShareRequest(name=_share_name(args, args.name))),
        SHARE_COLUMNS,
    )


async def share_delete(c: Client, args: argparse.Namespace) -> None:
    op = await c.call(
        c.shares.DeleteShare,
        ss.DeleteShareRequest(name=_share_name(args, args.name), force=args.force),
    )
    if args.wait:
        await c.wait(op)
    print(f"deleted {_share_name(args, args.name)}" if args.wait else op.name)


async def share_resize(c: Client, args: argparse.Namespace) -> None:
    op = await c.call(
        c.shares.ResizeShare,
        ss.ResizeShareRequest(name=_share_name(args, args.name), size_gib=args.size),
    )
    _print(args, await c.wait(op, Share) if args.wait else op, SHARE_COLUMNS)


async def share_reset_state(c: Client, args: argparse.Namespace) -> None:
    op = await c.call(
        c.shares.ResetShareState,
        ss.ResetShareStateRequest(
            name=_share_name(args, args.name), state=Share.State.Value(args.state.upper())
        ),
    )
    _print(args, await c.wait(op, Share) if args.wait else op, SHARE_COLUMNS)


async def access_create(c: Client, args: argparse.Namespace) -> None:
    op = await c.call(
        c.shares.CreateAccessRule,
        ss.CreateAccessRuleRequest(
            parent=_share_name(args, args.share),
            access_rule=AccessRule(access_to=args.to, access_level=LEVELS[args.level]),
        ),
    )
    _print(args, await c.wait(op, AccessRule) if args.wait else op, RULE_COLUMNS)


async def access_list(c: Client, args: argparse.Namespace) -> None:
    page = await c.call(
        c.shares.ListAccessRules,
        ss.ListAccessRulesRequest(parent=_share_name(args, args.share), page_size=1000),
    )
    _table(list(page.access_rules), RULE_COLUMNS, args.json)


async def access_update(c: Client, args: argparse.Namespace) -> None:
    op = await c.call(
        c.shares.UpdateAccessRule,
        ss.UpdateAccessRuleRequest(
            access_rule=AccessRule(name=args.name, access_level=LEVELS[args.level]),
            update_mask=field_mask_pb2.FieldMask(paths=["access_level"]),
        ),
    )
    _print(args, await c.wait(op, AccessRule) if args.wait else op, RULE_COLUMNS)


async def access_delete(c: Client, args: argparse.Namespace) -> None:
    op = await c.call(c.shares.DeleteAccessRule, ss.DeleteAccessRuleRequest(name=args.name))
    if args.wait:
        await c.wait(op)
    print(f"deleted {args.name}" if args.wait else op.name)


def _run(action: Callable[[Client, argparse.Namespace], Awaitable[None]]):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        async def main() -> None:
            async with Client() as client:
                await action(client, args)

        try:
            asyncio.run(main())
        except grpc.aio.AioRpcError as error:
            _fail(from_rpc_error(error), error.code().name)
            return 1
        except OperationFailed as failed:
            _fail(failed.error, failed.code.name)
            return 1
        return 0

    return run


def _fail(error, code: str) -> None:  # type: ignore[no-untyped-def]
    print(f"error: {code}: {error.message}", file=sys.stderr)
    for field, description in error.field_violations:
        print(f"  {field}: {description}", file=sys.stderr)


def common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--project", help="project (default: $SHAREMESH_PROJECT)")
    common.add_argument("--json", action="store_true", help="print JSON")
    common.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="print the Operation instead of waiting for it",
    )
    return common


def add_parsers(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """Adds `share …` and `access …`; returns the `share` verbs, for other modules' verbs."""
    share = commands.add_parser("share", help="shares").add_subparsers(dest="verb", required=True)
    p = share.add_parser("create", parents=[common], help="create a share")
    p.add_argument("id")
    p.add_argument(
        "--size", type=int, help="size in GiB (with --from-snapshot: the snapshot's by default)"
    )
    p.add_argument(
        "--from-snapshot", help="make it from this snapshot, projects/P/shares/S/snapshots/X"
    )
    p.add_argument("--type", help="share type, shareTypes/ID")
    p.add_argument("--network", help="share network, projects/P/shareNetworks/N")
    p.add_argument("--request-id", help="makes a retry safe")
    p.set_defaults(run=_run(share_create))
    p = share.add_parser("list", parents=[common], help="list shares")
    p.add_argument("--filter", help="e.g. state=ACTIVE")
    p.set_defaults(run=_run(share_list))
    for verb, action in (("show", share_show), ("delete", share_delete)):
        p = share.add_parser(verb, parents=[common], help=f"{verb} a share")
        p.add_argument("name", help="projects/P/shares/S, or S with --project")
        if verb == "delete":
            p.add_argument("--force", action="store_true")
        p.set_defaults(run=_run(action))
    p = share.add_parser("resize", parents=[common], help="grow (or shrink) a share")
    p.add_argument("name")
    p.add_argument("--size", type=int, required=True)
    p.set_defaults(run=_run(share_resize))
    p = share.add_parser(
        "reset-state", parents=[common], help="set a stuck or failed share's state (admin)"
    )
    p.add_argument("name")
    p.add_argument("--state", choices=["active", "error"], required=True)
    p.set_defaults(run=_run(share_reset_state))

    access = commands.add_parser("access", help="access rules").add_subparsers(
        dest="verb", required=True
    )
    p = access.add_parser("create", parents=[common], help="let a host mount a share")
    p.add_argument("share")
    p.add_argument("--to", required=True, help="IP address or CIDR")
    p.add_argument("--level", choices=sorted(LEVELS), default="rw")
    p.set_defaults(run=_run(access_create))
    p = access.add_parser("list", parents=[common], help="list a share's rules")
    p.add_argument("share")
    p.set_defaults(run=_run(access_list))
    p = access.add_parser("update", parents=[common], help="change a rule's level")
    p.add_argument("name")
    p.add_argument("--level", choices=sorted(LEVELS), required=True)
    p.set_defaults(run=_run(access_update))
    p = access.add_parser("delete", parents=[common], help="remove a rule")
    p.add_argument("name")
    p.set_defaults(run=_run(access_delete))
    return share
