"""What every API command shares: its common options, names from short ids, the
project a tenant key implies, waiting on Operations, and one way to fail."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from google.longrunning import operations_pb2
from google.protobuf import message

from sharemesh.client import Client, OperationFailed
from sharemesh.runtime.errors import from_rpc_error
from sharemesh.v1 import project_service_pb2, project_service_pb2_grpc

from . import _errors, _output, _progress, _settings

M = TypeVar("M", bound=message.Message)
Action = Callable[[Client, argparse.Namespace], Awaitable[None]]


class UsageError(Exception):
    """The command line cannot be turned into a request (exit code 2)."""


def common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--project",
        help="project of short ids (default: $SHAREMESH_PROJECT, the config file, "
        "or the project of a tenant key)",
    )
    common.add_argument(
        "--endpoint", help="API address HOST:PORT (default: $SHAREMESH_ENDPOINT or 127.0.0.1:8470)"
    )
    _output.add_options(common)
    common.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="print the Operation and return; `sharemesh operations wait NAME` follows it",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long to wait for an Operation (default 600; exit code 4 after it)",
    )
    return common


def project(args: argparse.Namespace) -> str:
    if not args.project:
        raise UsageError(
            "name a project with --project, SHAREMESH_PROJECT or `project` in "
            f"{_settings.config_path()} (a tenant key implies its own)"
        )
    return str(args.project)


def qualify(args: argparse.Namespace, value: str, collection: str) -> str:
    """A full resource name from a full one, or from an id plus the project."""
    return (
        value if value.startswith("projects/") else f"projects/{project(args)}/{collection}/{value}"
    )


def share_name(args: argparse.Namespace, value: str) -> str:
    return qualify(args, value, "shares")


def child_name(args: argparse.Namespace, value: str, collection: str, what: str) -> str:
    """`projects/P/shares/S/{collection}/X`, or `S/X` with the project."""
    if value.startswith("projects/"):
        return value
    share_id, _, child_id = value.partition("/")
    if not child_id or "/" in child_id:
        raise UsageError(
            f"name a {what} as projects/P/shares/S/{collection}/X or S/X, not {value!r}"
        )
    return f"{share_name(args, share_id)}/{collection}/{child_id}"


def type_name(value: str) -> str:
    return value if value.startswith("shareTypes/") else f"shareTypes/{value}"


async def _key_project(client: Client) -> str:
    """The project a tenant key belongs to: the one project the API lists for it.
    An admin key (many projects) or an API without the call implies none."""
    stub = project_service_pb2_grpc.ProjectServiceStub(client._channel)
    try:
        page = await client.call(stub.ListProjects, project_service_pb2.ListProjectsRequest(), 5)
    except grpc.aio.AioRpcError:
        return ""
    if len(page.projects) == 1 and not page.next_page_token:
        return str(page.projects[0].name).removeprefix("projects/")
    return ""


async def finish(
    c: Client,
    args: argparse.Namespace,
    op: operations_pb2.Operation,
    response_type: type[M] | None,
    columns: list[str],
    done: str = "",
) -> None:
    """With --no-wait, prints the Operation; else waits (with progress on a terminal)
    and prints the result, or `done` for an Operation without one (a delete)."""
    if not args.wait:
        _output.show(args, op, _output.OPERATION_COLUMNS)
        return
    result = await _progress.wait(c, op, response_type, args.timeout)
    if result is not None:
        _output.show(args, result, columns)
    elif done:
        print(done)


def run(action: Action) -> Callable[[argparse.Namespace], int]:
    """The command's entry: settings, the client, and every failure as one line."""

    def runner(args: argparse.Namespace) -> int:
        try:
            settings = _settings.load(
                {"endpoint": getattr(args, "endpoint", None), "project": args.project}
            )
        except _settings.SettingsError as error:
            print(f"error: {error}", file=sys.stderr)
            return _errors.USAGE
        args.project = settings.project

        async def main() -> None:
            async with Client(settings.endpoint, settings.token, settings.ca_file) as client:
                if not args.project and settings.token:
                    args.project = await _key_project(client)
                await action(client, args)

        try:
            asyncio.run(main())
        except grpc.aio.AioRpcError as error:
            return _errors.report(
                error.code(), from_rpc_error(error), settings.endpoint, settings.sources
            )
        except OperationFailed as failed:
            return _errors.report(failed.code, failed.error, settings.endpoint, settings.sources)
        except _progress.StillRunning as running:
            print(f"error: {running}", file=sys.stderr)
            return _errors.TIMED_OUT
        except UsageError as error:
            print(f"error: {error}", file=sys.stderr)
            return _errors.USAGE
        except KeyboardInterrupt:
            print("interrupted; an operation already started goes on", file=sys.stderr)
            return _errors.INTERRUPTED
        return _errors.OK

    return runner


def quiet_closed_pipe() -> None:
    """`sharemesh … | head -1`: a reader that stops early ends us quietly, as it does
    `cat`, instead of with a BrokenPipeError traceback."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
