"""`sharemesh project …`, `sharemesh key …` and `sharemesh quota …`: projects, their API
keys and their quotas (an admin key changes them; a project's keys read their quota)."""

from __future__ import annotations

import argparse
import sys

from sharemesh.client import Client
from sharemesh.runtime import quota as quotas
from sharemesh.v1 import project_pb2, project_service_pb2, project_service_pb2_grpc

from . import _output
from ._base import UsageError, project, qualify, run

ApiKey = project_pb2.ApiKey
PROJECT_COLUMNS = ["name", "description", "create_time"]
KEY_COLUMNS = ["name", "role", "description", "create_time"]
ROLES = {"admin": ApiKey.ADMIN, "member": ApiKey.MEMBER, "reader": ApiKey.READER}
# `quota set` options, by the amount each sets.
LIMIT_OPTIONS = {
    "shares": "shares",
    "gib": "share_gib",
    "snapshots": "snapshots",
    "snapshot_gib": "snapshot_gib",
    "networks": "share_networks",
}


def stub(c: Client) -> project_service_pb2_grpc.ProjectServiceStub:
    return project_service_pb2_grpc.ProjectServiceStub(c._channel)  # noqa: SLF001


def project_name(value: str) -> str:
    return value if value.startswith("projects/") else f"projects/{value}"


async def project_create(c: Client, args: argparse.Namespace) -> None:
    created = await c.call(
        stub(c).CreateProject,
        project_service_pb2.CreateProjectRequest(
            project_id=args.id, project=project_pb2.Project(description=args.description or "")
        ),
    )
    _output.show(args, created, PROJECT_COLUMNS)


async def project_list(c: Client, args: argparse.Namespace) -> None:
    page = await c.call(
        stub(c).ListProjects, project_service_pb2.ListProjectsRequest(page_size=1000)
    )
    _output.table(args, list(page.projects), PROJECT_COLUMNS)


async def project_show(c: Client, args: argparse.Namespace) -> None:
    found = await c.call(
        stub(c).GetProject, project_service_pb2.GetProjectRequest(name=project_name(args.name))
    )
    _output.show(args, found, PROJECT_COLUMNS)


async def project_delete(c: Client, args: argparse.Namespace) -> None:
    name = project_name(args.name)
    await c.call(stub(c).DeleteProject, project_service_pb2.DeleteProjectRequest(name=name))
    print(f"deleted {name} and revoked its keys")


async def key_create(c: Client, args: argparse.Namespace) -> None:
    key = await c.call(
        stub(c).CreateApiKey,
        project_service_pb2.CreateApiKeyRequest(
            parent=f"projects/{project(args)}",
            api_key=ApiKey(role=ROLES[args.role], description=args.description or ""),
        ),
    )
    _output.show(args, key, [*KEY_COLUMNS, "secret"])
    print("the secret is shown only now: keep it (use it as SHAREMESH_TOKEN)", file=sys.stderr)


async def key_list(c: Client, args: argparse.Namespace) -> None:
    page = await c.call(
        stub(c).ListApiKeys,
        project_service_pb2.ListApiKeysRequest(parent=f"projects/{project(args)}", page_size=1000),
    )
    _output.table(args, list(page.api_keys), KEY_COLUMNS)


async def key_revoke(c: Client, args: argparse.Namespace) -> None:
    name = qualify(args, args.name, "apiKeys")
    await c.call(stub(c).DeleteApiKey, project_service_pb2.DeleteApiKeyRequest(name=name))
    print(f"revoked {name}")


def _show_quota(args: argparse.Namespace, quota: project_pb2.Quota) -> None:
    if getattr(args, "json", False) or getattr(args, "format", "table") != "table":
        _output.show(args, quota, ["name", "limits", "usage"])
        return
    print(f"{'QUOTA':<15} {'USED':>6} {'LIMIT':>9}")
    for amount in quotas.AMOUNTS:
        limit = getattr(quota.limits, amount)
        unit = " GiB" if amount.endswith("_gib") else ""
        shown = f"{limit}{unit}" if limit else "none"
        print(f"{amount:<15} {getattr(quota.usage, amount):>6} {shown:>9}")


async def quota_show(c: Client, args: argparse.Namespace) -> None:
    quota = await c.call(
        stub(c).GetQuota,
        project_service_pb2.GetQuotaRequest(name=f"projects/{project(args)}/quota"),
    )
    _show_quota(args, quota)


async def quota_set(c: Client, args: argparse.Namespace) -> None:
    limits = project_pb2.QuotaAmounts()
    paths = []
    for option, amount in LIMIT_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            setattr(limits, amount, value)
            paths.append(f"limits.{amount}")
    if not paths:
        raise UsageError("name a limit: --shares, --gib, --snapshots, --snapshot-gib, --networks")
    quota = await c.call(
        stub(c).UpdateQuota,
        project_service_pb2.UpdateQuotaRequest(
            quota=project_pb2.Quota(name=f"projects/{project(args)}/quota", limits=limits),
            update_mask={"paths": paths},
        ),
    )
    _show_quota(args, quota)


def add_parsers(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    verbs = commands.add_parser("project", help="projects (admin)").add_subparsers(
        dest="verb", required=True, metavar="VERB"
    )
    p = verbs.add_parser("create", parents=[common], help="create a project (admin)")
    p.add_argument("id", help="the project's id: lower-case letters, digits and dashes")
    p.add_argument("--description", help="free text")
    p.set_defaults(run=run(project_create))
    p = verbs.add_parser("list", parents=[common], help="list projects (a tenant key: its own)")
    p.set_defaults(run=run(project_list))
    p = verbs.add_parser("show", parents=[common], help="show a project")
    p.add_argument("name", help="P, or projects/P")
    p.set_defaults(run=run(project_show))
    p = verbs.add_parser(
        "delete", parents=[common], help="delete an empty project and revoke its keys (admin)"
    )
    p.add_argument("name", help="P, or projects/P")
    p.set_defaults(run=run(project_delete))

    verbs = commands.add_parser("key", help="API keys (admin)").add_subparsers(
        dest="verb", required=True, metavar="VERB"
    )
    p = verbs.add_parser(
        "create", parents=[common], help="issue an API key; its secret is shown once"
    )
    p.add_argument(
        "--role",
        choices=list(ROLES),
        default="member",
        help="admin: everything, every project; member: read and write the project; "
        "reader: read only (default: member)",
    )
    p.add_argument("--description", help="free text, e.g. who holds the key")
    p.set_defaults(run=run(key_create))
    p = verbs.add_parser("list", parents=[common], help="list a project's keys (no secrets)")
    p.set_defaults(run=run(key_list))
    p = verbs.add_parser("revoke", parents=[common], help="revoke a key at once")
    p.add_argument("name", help="K, or projects/P/apiKeys/K")
    p.set_defaults(run=run(key_revoke))

    verbs = commands.add_parser("quota", help="project quotas").add_subparsers(
        dest="verb", required=True, metavar="VERB"
    )
    p = verbs.add_parser("show", parents=[common], help="show a project's limits and usage")
    p.set_defaults(run=run(quota_show))
    p = verbs.add_parser(
        "set", parents=[common], help="set a project's limits (admin; 0 is no limit)"
    )
    for option, amount in LIMIT_OPTIONS.items():
        p.add_argument(
            f"--{option.replace('_', '-')}",
            dest=option,
            type=int,
            metavar="N",
            help=f"the limit of {amount.replace('_', ' ')}",
        )
    p.set_defaults(run=run(quota_set))
