"""`sharemesh operations list|show|wait`: follow what `--no-wait` started."""

from __future__ import annotations

import argparse

from google.longrunning import operations_pb2

from sharemesh.client import Client
from sharemesh.v1 import access_rule_pb2, share_network_pb2, share_pb2, snapshot_pb2

from . import _output, _progress
from ._base import project, qualify, run

# Imported so the Operations' `Any` results decode; the registry is protobuf's.
_RESULT_TYPES = (access_rule_pb2, share_network_pb2, share_pb2, snapshot_pb2)
OPERATION_HELP = "projects/P/operations/ID, or ID in the project"


def operation_name(args: argparse.Namespace, value: str) -> str:
    return qualify(args, value, "operations")


async def operations_list(c: Client, args: argparse.Namespace) -> None:
    found, token = [], ""
    while True:
        page = await c.call(
            c.operations.ListOperations,
            operations_pb2.ListOperationsRequest(
                name=f"projects/{project(args)}", filter=args.filter or "", page_token=token
            ),
        )
        found += page.operations
        token = page.next_page_token
        if not token:
            break
    _output.table(args, found, ["name", "verb", "target", "done", "progress", "error"])


async def operations_show(c: Client, args: argparse.Namespace) -> None:
    op = await c.call(
        c.operations.GetOperation,
        operations_pb2.GetOperationRequest(name=operation_name(args, args.name)),
    )
    _output.show(args, op, _output.OPERATION_COLUMNS)


async def operations_wait(c: Client, args: argparse.Namespace) -> None:
    """Waits (with progress on a terminal) and prints the finished Operation's result;
    a failed one exits 1 with its error, like the command that started it."""
    op = await c.call(
        c.operations.GetOperation,
        operations_pb2.GetOperationRequest(name=operation_name(args, args.name)),
    )
    await _progress.wait(c, op, None, args.timeout)
    done = await c.call(c.operations.GetOperation, operations_pb2.GetOperationRequest(name=op.name))
    result = _output.unpack(done.response) if done.HasField("response") else None
    if result is None:  # a delete: no result but the Operation itself
        _output.show(args, done, _output.OPERATION_COLUMNS)
    else:  # the result as the command that started it would print it
        _output.show(args, result, [f.name for f in result.DESCRIPTOR.fields])


def add_parsers(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    verbs = commands.add_parser(
        "operations", help="long-running operations: follow what --no-wait started"
    ).add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("list", parents=[common], help="list the project's operations")
    p.add_argument("--filter", help="e.g. done=false")
    p.set_defaults(run=run(operations_list))
    p = verbs.add_parser("show", parents=[common], help="show an operation and its progress")
    p.add_argument("name", help=OPERATION_HELP)
    p.set_defaults(run=run(operations_show))
    p = verbs.add_parser(
        "wait", parents=[common], help="wait for an operation; exit 0 if it succeeded"
    )
    p.add_argument("name", help=OPERATION_HELP)
    p.set_defaults(run=run(operations_wait))
