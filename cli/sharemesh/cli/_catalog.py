"""`sharemesh type …` and `sharemesh pool list`: what shares can be made of.
Share types are read by everyone and made by admins; pools are an admin's view."""

from __future__ import annotations

import argparse

from sharemesh.client import Client
from sharemesh.v1 import (
    pool_service_pb2,
    pool_service_pb2_grpc,
    share_type_pb2,
    share_type_service_pb2_grpc,
)
from sharemesh.v1 import share_type_service_pb2 as sts

from . import _output
from ._base import UsageError, run, type_name

TYPE_COLUMNS = ["name", "description", "extra_specs", "create_time"]
POOL_COLUMNS = ["name", "total_gib", "free_gib", "allocated_gib", "provisioned_gib"]


def _types(c: Client) -> share_type_service_pb2_grpc.ShareTypeServiceStub:
    return share_type_service_pb2_grpc.ShareTypeServiceStub(c._channel)


async def type_list(c: Client, args: argparse.Namespace) -> None:
    found, token = [], ""
    while True:
        page = await c.call(_types(c).ListShareTypes, sts.ListShareTypesRequest(page_token=token))
        found += page.share_types
        token = page.next_page_token
        if not token:
            break
    _output.table(args, found, TYPE_COLUMNS)


async def type_show(c: Client, args: argparse.Namespace) -> None:
    found = await c.call(_types(c).GetShareType, sts.GetShareTypeRequest(name=type_name(args.name)))
    _output.show(args, found, TYPE_COLUMNS)


async def type_create(c: Client, args: argparse.Namespace) -> None:
    specs = {}
    for pair in args.spec or ():
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--spec takes KEY=VALUE, not {pair!r}")
        specs[key] = value
    created = await c.call(
        _types(c).CreateShareType,
        sts.CreateShareTypeRequest(
            share_type_id=args.id,
            share_type=share_type_pb2.ShareType(
                description=args.description or "", extra_specs=specs
            ),
        ),
    )
    _output.show(args, created, TYPE_COLUMNS)


async def type_delete(c: Client, args: argparse.Namespace) -> None:
    name = type_name(args.name)
    await c.call(_types(c).DeleteShareType, sts.DeleteShareTypeRequest(name=name))
    print(f"deleted {name}")


async def pool_list(c: Client, args: argparse.Namespace) -> None:
    stub = pool_service_pb2_grpc.PoolServiceStub(c._channel)
    parent = args.backend if args.backend.startswith("backends/") else f"backends/{args.backend}"
    page = await c.call(stub.ListPools, pool_service_pb2.ListPoolsRequest(parent=parent))
    _output.table(args, list(page.pools), POOL_COLUMNS)


def add_parsers(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    verbs = commands.add_parser("type", help="share types").add_subparsers(
        dest="verb", required=True, metavar="VERB"
    )
    p = verbs.add_parser("list", parents=[common], help="list share types")
    p.set_defaults(run=run(type_list))
    p = verbs.add_parser("show", parents=[common], help="show a share type")
    p.add_argument("name", help="T, or shareTypes/T")
    p.set_defaults(run=run(type_show))
    p = verbs.add_parser("create", parents=[common], help="define a share type (admin)")
    p.add_argument("id", help="the type's id: lower-case letters, digits and dashes")
    p.add_argument("--description", help="free text")
    p.add_argument(
        "--spec",
        action="append",
        metavar="KEY=VALUE",
        help="an extra spec, e.g. snapshot_support=true (repeatable)",
    )
    p.set_defaults(run=run(type_create))
    p = verbs.add_parser("delete", parents=[common], help="delete a share type (admin)")
    p.add_argument("name", help="T, or shareTypes/T")
    p.set_defaults(run=run(type_delete))

    verbs = commands.add_parser("pool", help="storage pools (admin)").add_subparsers(
        dest="verb", required=True, metavar="VERB"
    )
    p = verbs.add_parser("list", parents=[common], help="list pools with their capacity")
    p.add_argument("--backend", default="-", help="one backend's pools (default: all)")
    p.set_defaults(run=run(pool_list))
