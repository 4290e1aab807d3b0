"""`sharemesh network …`: share networks, and plugging namespaces into them."""

from __future__ import annotations

import argparse
import re

from sharemesh.client import Client
from sharemesh.v1 import share_network_pb2
from sharemesh.v1 import share_network_service_pb2 as sns

from . import _output
from ._base import finish, project, qualify, run

ShareNetwork = share_network_pb2.ShareNetwork
Attachment = share_network_pb2.Attachment
COLUMNS = ["name", "cidr", "segmentation_id", "state", "state_message", "create_time"]


def network_name(args: argparse.Namespace, value: str) -> str:
    return qualify(args, value, "shareNetworks")


def attachment_id(netns: str) -> str:
    """An attachment's id, from the namespace it plugs in (ids are lower-case AIP ids)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", netns.lower()).strip("-")
    return slug if slug[:1].isalpha() else f"ns-{slug}"


async def network_create(c: Client, args: argparse.Namespace) -> None:
    op = await c.call(
        c.networks.CreateShareNetwork,
        sns.CreateShareNetworkRequest(
            parent=f"projects/{project(args)}",
            share_network_id=args.id,
            share_network=ShareNetwork(cidr=args.cidr, segmentation_id=args.segmentation_id),
        ),
    )
    await finish(c, args, op, ShareNetwork, COLUMNS)


async def network_list(c: Client, args: argparse.Namespace) -> None:
    page = await c.call(
        c.networks.ListShareNetworks,
        sns.ListShareNetworksRequest(parent=f"projects/{project(args)}", page_size=1000),
    )
    _output.table(args, list(page.share_networks), ["name", "cidr", "state"])


async def network_show(c: Client, args: argparse.Namespace) -> None:
    network = await c.call(
        c.networks.GetShareNetwork, sns.GetShareNetworkRequest(name=network_name(args, args.name))
    )
    _output.show(args, network, COLUMNS)


async def network_delete(c: Client, args: argparse.Namespace) -> None:
    name = network_name(args, args.name)
    op = await c.call(c.networks.DeleteShareNetwork, sns.DeleteShareNetworkRequest(name=name))
    await finish(c, args, op, None, [], done=f"deleted {name}")


async def network_attach(c: Client, args: argparse.Namespace) -> None:
    op = await c.call(
        c.networks.CreateAttachment,
        sns.CreateAttachmentRequest(
            parent=network_name(args, args.network),
            attachment_id=attachment_id(args.netns),
            attachment=Attachment(netns=args.netns, address=args.address, host=args.host or ""),
        ),
    )
    await finish(c, args, op, Attachment, ["name", "netns", "address", "host", "state"])


async def network_detach(c: Client, args: argparse.Namespace) -> None:
    name = f"{network_name(args, args.network)}/attachments/{attachment_id(args.netns)}"
    op = await c.call(c.networks.DeleteAttachment, sns.DeleteAttachmentRequest(name=name))
    await finish(c, args, op, None, [], done=f"detached {args.netns}")


def add_parsers(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    verbs = commands.add_parser("network", help="share networks").add_subparsers(
        dest="verb", required=True, metavar="VERB"
    )
    p = verbs.add_parser("create", parents=[common], help="create a share network")
    p.add_argument("id", help="the network's id: lower-case letters, digits and dashes")
    p.add_argument("--cidr", required=True, help="its addresses, e.g. 10.31.0.0/24")
    p.add_argument("--segmentation-id", type=int, default=0, help="recorded only")
    p.set_defaults(run=run(network_create))
    p = verbs.add_parser("list", parents=[common], help="list share networks")
    p.set_defaults(run=run(network_list))
    for verb, action in (("show", network_show), ("delete", network_delete)):
        p = verbs.add_parser(verb, parents=[common], help=f"{verb} a share network")
        p.add_argument("name", help="projects/P/shareNetworks/N, or N in the project")
        p.set_defaults(run=run(action))
    p = verbs.add_parser(
        "attach", parents=[common], help="plug a network namespace into a share network"
    )
    p.add_argument("network", help="N, or projects/P/shareNetworks/N")
    p.add_argument("netns", help="an existing network namespace (ip netns)")
    p.add_argument("--address", required=True, help="its address on the network")
    p.add_argument("--host", help="the host it is on (default: the only one)")
    p.set_defaults(run=run(network_attach))
    p = verbs.add_parser("detach", parents=[common], help="unplug a namespace")
    p.add_argument("network", help="N, or projects/P/shareNetworks/N")
    p.add_argument("netns", help="the namespace attached")
    p.set_defaults(run=run(network_detach))
