"""The gateway process: one per hypervisor host, registered under its lease. It plugs
namespaces into share networks and runs one Ganesha per share network that has
gateway-mediated shares on this host (`_networks`), and heals both."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

import grpc

from sharemesh import network
from sharemesh.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from sharemesh.runtime import controllers, names, retry
from sharemesh.runtime.config import MeshConfig
from sharemesh.runtime.coordination import Versioned, keys
from sharemesh.runtime.process import Context
from sharemesh.runtime.server import Binding
from sharemesh.state.v1 import records_pb2

from ._networks import Networks

log = logging.getLogger(__name__)


class GatewayService(gateway_service_pb2_grpc.GatewayServiceServicer):
    def __init__(self, networks: Networks) -> None:
        self._networks = networks

    async def SyncShareNetwork(  # noqa: N802
        self,
        request: gateway_service_pb2.SyncShareNetworkRequest,
        context: grpc.aio.ServicerContext,
    ) -> gateway_service_pb2.SyncShareNetworkResponse:
        names.SHARE_NETWORK.parse("share_network", request.share_network)
        # Shielded: a caller that gives up must not cancel half-made plumbing.
        await asyncio.shield(self._networks.sync(request.share_network))
        return gateway_service_pb2.SyncShareNetworkResponse()

    async def SyncAttachment(  # noqa: N802
        self, request: gateway_service_pb2.SyncAttachmentRequest, context: grpc.aio.ServicerContext
    ) -> gateway_service_pb2.SyncAttachmentResponse:
        names.SHARE_NETWORK.parse("share_network", request.share_network)
        await asyncio.shield(self._networks.sync(request.share_network))
        return gateway_service_pb2.SyncAttachmentResponse()


class GatewayApp:
    def __init__(self, context: Context, own_servers: bool) -> None:
        self._context = context
        self._own_servers = own_servers
        config = context.config.gateway
        self.networks = Networks(
            context.store,
            config.host,
            Path(config.state_dir),
            context.config.export_id_quarantine_seconds,
            tuple(backend.name for backend in context.config.backends),
            config.storage_range,
        )
        self.bindings = [
            Binding(
                gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name,
                gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server,
                GatewayService(self.networks),
            )
        ]

    async def run(self, endpoint: str) -> None:
        host = self._context.config.gateway.host
        store = self._context.store
        networks = self.networks
        # A watched attachment of this host, or a network being deleted, syncs its network.
        controller = controllers.Controller(f"networks on {host}", networks.sync)

        def attachment_changed(
            old: Versioned[records_pb2.AttachmentRecord] | None,
            new: Versioned[records_pb2.AttachmentRecord] | None,
        ) -> None:
            if found := new or old:
                controller.queue.add(found.value.share_network)

        def deletion_asked(
            old: Versioned[records_pb2.ShareNetworkRecord] | None,
            new: Versioned[records_pb2.ShareNetworkRecord] | None,
        ) -> None:
            if found := new or old:
                controller.queue.add(found.value.share_network.name)

        networks.attachments.add_handler(attachment_changed)
        networks.going.add_handler(deletion_asked)
        async with asyncio.TaskGroup() as group:
            group.create_task(networks.attachments.run())
            group.create_task(networks.going.run())
            await networks.attachments.synced.wait()
            await networks.going.synced.wait()
            # Rebuild (or adopt) this host's networks before saying we are here; while
            # etcd is away, wait for it (what serves now goes on serving meanwhile).
            await retry.persist("rebuilding this host's networks", self.reconcile)
            await retry.persist(
                "registering",
                lambda: store.put(
                    keys.host_key(store.root, host),
                    records_pb2.HostRecord(name=host, endpoint=endpoint),
                    lease=self._context.session.lease_id,
                ),
            )
            log.info("registered host %s at %s", host, endpoint)
            group.create_task(controller.run())
            group.create_task(
                retry.every(
                    self._context.config.reconcile_interval_seconds, "reconcile", self.reconcile
                )
            )

    async def reconcile(self) -> None:
        for name in sorted(await self.networks.networks_here()):
            try:
                await self.networks.sync(name)
            except Exception as error:
                if retry.transient(error):
                    raise  # etcd or a peer is away: the whole round waits and retries
                log.exception("could not sync %s; trying again next round", name)

    async def close(self) -> None:
        # Only an orderly stop lets go of the servers: after a lost lease the next
        # incarnation adopts them, and tenants keep being served meanwhile.
        await self.networks.stop(stop_servers=self._own_servers and self._context.stopping.is_set())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--own-servers",
        action="store_true",
        help="stop this host's gateways and remove its bridges on an orderly "
        "exit (the launcher sets it); without it they keep serving",
    )


async def release(config: MeshConfig, args: argparse.Namespace) -> None:
    """Stops this host's gateways and removes their namespaces and bridges, from the
    config and the host alone: for a gateway that died, when etcd may be dead too."""
    await network.release_servers("gateways", Path(config.gateway.state_dir))
    log.info("released host %s", config.gateway.host)


async def build(context: Context, args: argparse.Namespace) -> GatewayApp:
    return GatewayApp(context, args.own_servers)
