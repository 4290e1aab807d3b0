"""`sharemesh.v1.ShareNetworkService`: tenant networks and the namespaces plugged into
them. A network is a record until something joins it; the host's gateway service makes
its bridge, plugs attachments in, and tears it all down when the network is deleted."""

from __future__ import annotations

import functools
import ipaddress
import re
import uuid

import grpc
from google.longrunning import operations_pb2

from sharemesh import network
from sharemesh.runtime import names, operations, quota, validation
from sharemesh.runtime.config import QuotaConfig
from sharemesh.runtime.coordination import Store, Txn, Versioned, keys
from sharemesh.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
)
from sharemesh.runtime.peers import Peers
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_network_pb2, share_network_service_pb2
from sharemesh.v1 import share_network_service_pb2_grpc as grpc_pb

from . import _paging
from ._auth import Authenticator, Caller
from ._base import Base, view
from ._cache import WatchCache

ShareNetwork = share_network_pb2.ShareNetwork
Attachment = share_network_pb2.Attachment
ATTACHMENT = names.Pattern(
    "projects/{project}/shareNetworks/{share_network}/attachments/{attachment}"
)
_NETNS = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def network_view(caller: Caller, found: Versioned[records_pb2.ShareNetworkRecord]) -> ShareNetwork:
    return view(caller, found.value.share_network, found.mod_revision)


def network_of(name: str) -> str:
    return name.split("/attachments/")[0]


class ShareNetworks(Base, grpc_pb.ShareNetworkServiceServicer):
    def __init__(
        self,
        store: Store,
        peers: Peers,
        auth: Authenticator,
        cache: WatchCache,
        quotas: QuotaConfig | None = None,
    ) -> None:
        super().__init__(store, peers, auth, cache, quotas)

    async def network(self, name: str, field: str) -> Versioned[records_pb2.ShareNetworkRecord]:
        return await self.record(names.SHARE_NETWORK, name, field, records_pb2.ShareNetworkRecord)

    async def ListShareNetworks(  # noqa: N802
        self,
        request: share_network_service_pb2.ListShareNetworksRequest,
        context: grpc.aio.ServicerContext,
    ) -> share_network_service_pb2.ListShareNetworksResponse:
        validation.check_request(request)
        project = names.PROJECT.parse("parent", request.parent)["project"]
        caller = self.caller(context)
        caller.check_parent(project)
        items, token = await _paging.page(
            self.store,
            self.store.prefix_of(request.parent, "shareNetworks"),
            records_pb2.ShareNetworkRecord,
            request.page_token,
            request.page_size,
            cache=self.cache,
        )
        return share_network_service_pb2.ListShareNetworksResponse(
            share_networks=[network_view(caller, i) for i in items], next_page_token=token
        )

    async def GetShareNetwork(  # noqa: N802
        self,
        request: share_network_service_pb2.GetShareNetworkRequest,
        context: grpc.aio.ServicerContext,
    ) -> share_network_pb2.ShareNetwork:
        validation.check_request(request)
        caller = self.caller(context)
        caller.check_resource(request.name)
        return network_view(caller, await self.network(request.name, "name"))

    async def CreateShareNetwork(  # noqa: N802
        self,
        request: share_network_service_pb2.CreateShareNetworkRequest,
        context: grpc.aio.ServicerContext,
    ) -> operations_pb2.Operation:
        validation.check_request(request, "share_network")
        project = names.PROJECT.parse("parent", request.parent)["project"]
        caller = self.caller(context)
        caller.check_parent(project)
        names.check_id("share_network_id", request.share_network_id)
        try:
            cidr = ipaddress.ip_network(request.share_network.cidr, strict=False)
        except ValueError:
            raise InvalidArgument(
                "share_network.cidr", "is not a CIDR such as 10.0.0.0/24"
            ) from None
        if cidr.overlaps(network.STORAGE_RANGE):
            raise InvalidArgument(
                "share_network.cidr", f"overlaps {network.STORAGE_RANGE}, which the mesh uses"
            )
        if cidr.num_addresses < 4:
            raise InvalidArgument("share_network.cidr", "needs room for at least two members")
        if not 0 <= request.share_network.segmentation_id <= 4094:
            raise InvalidArgument("share_network.segmentation_id", "must be 0-4094")
        name = f"{request.parent}/shareNetworks/{request.share_network_id}"

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            await quota.reserve_share_network(self.store, txn, self.quotas, project)
            record = records_pb2.ShareNetworkRecord(project=project)
            record.share_network.CopyFrom(request.share_network)
            record.share_network.name = name
            record.share_network.uid = uuid.uuid4().hex
            record.share_network.cidr = str(cidr)
            # Nothing exists on any host until a share or a namespace joins the network.
            record.share_network.state = ShareNetwork.ACTIVE
            record.share_network.create_time.CopyFrom(operations.now())
            txn.create(self.store.key_of(name), record)
            operations.finish(op, response=record.share_network)

        return await self.mutate(caller, name, "create", request, write)

    async def DeleteShareNetwork(  # noqa: N802
        self,
        request: share_network_service_pb2.DeleteShareNetworkRequest,
        context: grpc.aio.ServicerContext,
    ) -> operations_pb2.Operation:
        validation.check_request(request)
        caller = self.caller(context)
        caller.check_resource(request.name)

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            found = await self.network(request.name, "name")
            # Every share that uses the network wrote its record, so a cache at its
            # revision or later knows them all (and the commit compares that revision).
            users = await self.cache.shares_using("share_network", request.name)
            if users:
                raise FailedPrecondition(
                    f"{len(users)} shares use {request.name}, e.g. {users[0]}; delete them first",
                    reason="SHARE_NETWORK_IN_USE",
                )
            found.value.delete_requested = True
            self.queue(
                txn,
                found,
                found.value.share_network,
                ShareNetwork.DELETING,
                op,
                "removing the network from every host",
            )

        op = await self.mutate(caller, request.name, "delete", request, write)
        for host in await self.peers.hosts():
            self.peers.nudge(
                f"sync {request.name}",
                functools.partial(self.peers.sync_share_network, host, request.name),
            )
        return op

    async def ListAttachments(  # noqa: N802
        self,
        request: share_network_service_pb2.ListAttachmentsRequest,
        context: grpc.aio.ServicerContext,
    ) -> share_network_service_pb2.ListAttachmentsResponse:
        validation.check_request(request)
        caller = self.caller(context)
        caller.check_resource(request.parent)
        await self.network(request.parent, "parent")
        items, token = await _paging.page(
            self.store,
            self.store.prefix_of(request.parent, "attachments"),
            records_pb2.AttachmentRecord,
            request.page_token,
            request.page_size,
            cache=self.cache,
        )
        return share_network_service_pb2.ListAttachmentsResponse(
            attachments=[view(caller, i.value.attachment, i.mod_revision) for i in items],
            next_page_token=token,
        )

    async def CreateAttachment(  # noqa: N802
        self,
        request: share_network_service_pb2.CreateAttachmentRequest,
        context: grpc.aio.ServicerContext,
    ) -> operations_pb2.Operation:
        validation.check_request(request, "attachment")
        # Plugging a host's namespaces in is the hypervisor's (an operator's) job: a
        # tenant could otherwise pull another tenant's guest onto its network.
        caller = self.caller(context)
        caller.check_admin()
        names.check_id("attachment_id", request.attachment_id)
        if not _NETNS.match(request.attachment.netns):
            raise InvalidArgument("attachment.netns", "is not a network namespace name")
        if request.attachment.netns.startswith(network.MESH_NETNS_PREFIX):
            raise InvalidArgument("attachment.netns", "is one of the mesh's own namespaces")
        hosts = await self.peers.hosts()
        host = request.attachment.host or await self._only_host()
        if host not in hosts:
            raise InvalidArgument(
                "attachment.host", f"no gateway service runs on host {host!r}; hosts: {hosts}"
            )
        name = f"{request.parent}/attachments/{request.attachment_id}"

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            network = await self.network(request.parent, "parent")
            if network.value.delete_requested:
                raise FailedPrecondition("the share network is being deleted")
            cidr = ipaddress.ip_network(network.value.share_network.cidr)
            try:
                address = ipaddress.ip_address(request.attachment.address.split("/")[0])
            except ValueError:
                raise InvalidArgument("attachment.address", "is not an IP address") from None
            if address not in cidr or address in (cidr.network_address, cidr.broadcast_address):
                raise InvalidArgument(
                    "attachment.address", f"{address} is not a member address of {cidr}"
                )
            reservation = keys.address_key(self.store.root, request.parent, str(address))
            if await self.store.get(reservation, records_pb2.AttachmentRecord):
                raise AlreadyExists(
                    f"{address} is already in use on {request.parent}",
                    field_violations=[("attachment.address", "in use")],
                )
            record = records_pb2.AttachmentRecord(
                share_network=request.parent,
                netns=request.attachment.netns,
                address=f"{address}/{cidr.prefixlen}",
                host=host,
            )
            record.attachment.CopyFrom(request.attachment)
            record.attachment.name = name
            record.attachment.host = host
            record.attachment.address = str(address)
            record.attachment.state = Attachment.CREATING
            record.pending_operations.append(op.operation.name)
            operations.set_progress(op, "plugging the namespace in", 10)
            txn.check(network.key, network.mod_revision)
            txn.create(self.store.key_of(name), record)
            txn.create(reservation, record)

        op = await self.mutate(caller, name, "create", request, write)
        self.peers.nudge(
            f"sync {request.parent}", lambda: self.peers.sync_share_network(host, request.parent)
        )
        return op

    async def DeleteAttachment(  # noqa: N802
        self,
        request: share_network_service_pb2.DeleteAttachmentRequest,
        context: grpc.aio.ServicerContext,
    ) -> operations_pb2.Operation:
        validation.check_request(request)
        ATTACHMENT.parse("name", request.name)
        caller = self.caller(context)
        caller.check_admin()
        host = ""

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            nonlocal host
            found = await self.record(
                ATTACHMENT, request.name, "name", records_pb2.AttachmentRecord
            )
            host = found.value.host
            found.value.delete_requested = True
            self.queue(
                txn,
                found,
                found.value.attachment,
                Attachment.DELETING,
                op,
                "unplugging the namespace",
            )

        op = await self.mutate(caller, request.name, "delete", request, write)
        network = network_of(request.name)
        self.peers.nudge(f"sync {network}", lambda: self.peers.sync_share_network(host, network))
        return op

    async def _only_host(self) -> str:
        hosts = await self.peers.hosts()
        if len(hosts) != 1:
            raise InvalidArgument(
                "attachment.host", f"name one of the {len(hosts)} hosts: {', '.join(hosts)}"
            )
        return hosts[0]
