"""`sharemesh share …` and `sharemesh access …`: the tenant's commands, noun then verb."""

from __future__ import annotations

import argparse

from google.protobuf import field_mask_pb2, message

from sharemesh.client import Client
from sharemesh.v1 import access_rule_pb2, share_pb2
from sharemesh.v1 import share_service_pb2 as ss

from . import _base, _output
from ._base import common_options, finish, qualify, share_name

Share = share_pb2.Share
AccessRule = access_rule_pb2.AccessRule
LEVELS = {"rw": AccessRule.READ_WRITE, "ro": AccessRule.READ_ONLY}

# The names other command modules have imported from here.
_run = _base.run
_project = _base.project
_share_name = share_name
__all__ = ["common_options", "qualify", "_run", "_project", "_share_name", "_print", "_table"]


def _print(args: argparse.Namespace, item: message.Message, columns: list[str]) -> None:
    _output.show(args, item, columns)


def _table(
    rows: list[message.Message], columns: list[str], args: argparse.Namespace | bool
) -> None:
    """A list; `args` may be the older `--json` flag alone."""
    if isinstance(args, bool):
        args = argparse.Namespace(json=args, format="table", column=None)
    _output.table(args, rows, columns)


SHARE_COLUMNS = [
    "name",
    "size_gib",
    "state",
    "state_message",
    "share_type",
    "share_network",
    "pool",
    "export_locations",
    "create_time",
    "etag",
]
RULE_COLUMNS = ["name", "access_to", "access_level", "state", "state_message"]


def rule_name(args: argparse.Namespace, value: str) -> str:
    return _base.child_name(args, value, "accessRules", "access rule")


def positive_gib(text: str) -> int:
    """`--size`: a whole number of GiB, at least 1 (0 is no size, not "required")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of GiB") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 GiB, not {value}")
    return value


async def share_create(c: Client, args: argparse.Namespace) -> None:
    share = Share(
        size_gib=args.size or 0,
        share_type=_base.type_name(args.type) if args.type else "",
        share_network=qualify(args, args.network, "shareNetworks") if args.network else "",
        source_snapshot=(
            _base.child_name(args, args.from_snapshot, "snapshots", "snapshot")
            if args.from_snapshot
            else ""
        ),
    )
    op = await c.call(
        c.shares.CreateShare,
        ss.CreateShareRequest(
            parent=f"projects/{_base.project(args)}",
            share_id=args.id,
            share=share,
            request_id=args.request_id or "",
        ),
    )
    await finish(c, args, op, Share, SHARE_COLUMNS)


async def share_list(c: Client, args: argparse.Namespace) -> None:
    shares, token = [], ""
    while True:
        page = await c.call(
            c.shares.ListShares,
            ss.ListSharesRequest(
                parent=f"projects/{_base.project(args)}", page_token=token, filter=args.filter or ""
            ),
        )
        shares += page.shares
        token = page.next_page_token
        if not token:
            break
    _output.table(args, shares, ["name", "size_gib", "state", "pool"])


async def share_show(c: Client, args: argparse.Namespace) -> None:
    share = await c.call(c.shares.GetShare, ss.GetShareRequest(name=share_name(args, args.name)))
    _output.show(args, share, SHARE_COLUMNS)


async def share_delete(c: Client, args: argparse.Namespace) -> None:
    name = share_name(args, args.name)
    op = await c.call(c.shares.DeleteShare, ss.DeleteShareRequest(name=name, force=args.force))
    await finish(c, args, op, None, [], done=f"deleted {name}")


async def share_resize(c: Client, args: argparse.Namespace) -> None:
    op = await c.call(
        c.shares.ResizeShare,
        ss.ResizeShareRequest(name=share_name(args, args.name), size_gib=args.size),
    )
    await finish(c, args, op, Share, SHARE_COLUMNS)


async def share_reset_state(c: Client, args: argparse.Namespace) -> None:
    op = await c.call(
        c.shares.ResetShareState,
        ss.ResetShareStateRequest(name=share_name(args, args.name), state=args.state.upper()),
    )
    await finish(c, args, op, Share, SHARE_COLUMNS)


async def access_create(c: Client, args: argparse.Namespace) -> None:
    op = await c.call(
        c.shares.CreateAccessRule,
        ss.CreateAccessRuleRequest(
            parent=share_name(args, args.share),
            access_rule=AccessRule(access_to=args.to, access_level=LEVELS[args.level]),
            request_id=args.request_id or "",
        ),
    )
    await finish(c, args, op, AccessRule, RULE_COLUMNS)


async def access_list(c: Client, args: argparse.Namespace) -> None:
    rules, token = [], ""
    while True:
        page = await c.call(
            c.shares.ListAccessRules,
            ss.ListAccessRulesRequest(parent=share_name(args, args.share), page_token=token),
        )
        rules += page.access_rules
        token = page.next_page_token
        if not token:
            break
    _output.table(args, rules, RULE_COLUMNS)


async def access_update(c: Client, args: argparse.Namespace) -> None:
    op = await c.call(
        c.shares.UpdateAccessRule,
        ss.UpdateAccessRuleRequest(
            access_rule=AccessRule(
                name=rule_name(args, args.name), access_level=LEVELS[args.level]
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["access_level"]),
        ),
    )
    await finish(c, args, op, AccessRule, RULE_COLUMNS)


async def access_delete(c: Client, args: argparse.Namespace) -> None:
    name = rule_name(args, args.name)
    op = await c.call(c.shares.DeleteAccessRule, ss.DeleteAccessRuleRequest(name=name))
    await finish(c, args, op, None, [], done=f"deleted {name}")


SHARE_HELP = "projects/P/shares/S, or S in the project"
RULE_HELP = "projects/P/shares/S/accessRules/R, or S/R in the project"


def add_parsers(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """Adds `share …` and `access …`; returns the `share` verbs, for other modules' verbs."""
    share = commands.add_parser("share", help="shares: NFS file systems").add_subparsers(
        dest="verb", required=True, metavar="VERB"
    )
    p = share.add_parser("create", parents=[common], help="create a share")
    p.add_argument("id", help="the share's id: lower-case letters, digits and dashes")
    p.add_argument(
        "--size",
        type=positive_gib,
        help="size in GiB, at least 1 (with --from-snapshot: the snapshot's by default)",
    )
    p.add_argument(
        "--from-snapshot", metavar="SNAPSHOT", help="make it from this snapshot: S/X, or its name"
    )
    p.add_argument("--type", help="share type: T, or shareTypes/T (default: the mesh's default)")
    p.add_argument("--network", help="share network: N, or projects/P/shareNetworks/N")
    p.add_argument("--request-id", help="makes a retry safe: the same id never acts twice")
    p.set_defaults(run=_base.run(share_create))
    p = share.add_parser("list", parents=[common], help="list the project's shares")
    p.add_argument("--filter", help="e.g. state=ACTIVE")
    p.set_defaults(run=_base.run(share_list))
    p = share.add_parser("show", parents=[common], help="show a share and how to mount it")
    p.add_argument("name", help=SHARE_HELP)
    p.set_defaults(run=_base.run(share_show))
    p = share.add_parser("delete", parents=[common], help="delete a share")
    p.add_argument("name", help=SHARE_HELP)
    p.add_argument("--force", action="store_true", help="also delete its snapshots")
    p.set_defaults(run=_base.run(share_delete))
    p = share.add_parser("resize", parents=[common], help="grow (or shrink) a share")
    p.add_argument("name", help=SHARE_HELP)
    p.add_argument("--size", type=positive_gib, required=True, help="the new size in GiB")
    p.set_defaults(run=_base.run(share_resize))
    p = share.add_parser(
        "reset-state", parents=[common], help="set a stuck or failed share's state (admin)"
    )
    p.add_argument("name", help=SHARE_HELP)
    p.add_argument(
        "--state",
        choices=["active", "error"],
        required=True,
        help="active: make it true again; error: give up on it",
    )
    p.set_defaults(run=_base.run(share_reset_state))

    access = commands.add_parser("access", help="access rules: who may mount").add_subparsers(
        dest="verb", required=True, metavar="VERB"
    )
    p = access.add_parser("create", parents=[common], help="let a host or network mount a share")
    p.add_argument("share", help=SHARE_HELP)
    p.add_argument("--to", required=True, help="IP address or CIDR (stored normalized: a/32)")
    p.add_argument(
        "--level", choices=sorted(LEVELS), default="rw", help="read-write or read-only (rw)"
    )
    p.add_argument("--request-id", help="makes a retry safe: the same id never acts twice")
    p.set_defaults(run=_base.run(access_create))
    p = access.add_parser("list", parents=[common], help="list a share's rules")
    p.add_argument("share", help=SHARE_HELP)
    p.set_defaults(run=_base.run(access_list))
    p = access.add_parser("update", parents=[common], help="change a rule's level")
    p.add_argument("name", help=RULE_HELP)
    p.add_argument("--level", choices=sorted(LEVELS), required=True, help="read-write or read-only")
    p.set_defaults(run=_base.run(access_update))
    p = access.add_parser("delete", parents=[common], help="remove a rule")
    p.add_argument("name", help=RULE_HELP)
    p.set_defaults(run=_base.run(access_delete))
    return share
