"""The gateway process: one per hypervisor host, registered under its lease.

Tenant-network gateways (a Ganesha per host and share network) come with share
networks; until then its RPCs answer UNIMPLEMENTED, as the generated base does."""

from __future__ import annotations

import argparse
import asyncio
import logging

from sharemesh.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from sharemesh.runtime.coordination import keys
from sharemesh.runtime.process import Context
from sharemesh.runtime.server import Binding
from sharemesh.state.v1 import records_pb2

log = logging.getLogger(__name__)


class GatewayApp:
    def __init__(self, context: Context) -> None:
        self._context = context
        self.bindings = [
            Binding(
                gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name,
                gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server,
                gateway_service_pb2_grpc.GatewayServiceServicer(),
            )
        ]

    async def run(self, endpoint: str) -> None:
        host = self._context.config.gateway.host
        store = self._context.store
        await store.put(
            keys.host_key(store.root, host),
            records_pb2.HostRecord(name=host, endpoint=endpoint),
            lease=self._context.session.lease_id,
        )
        log.info("registered host %s at %s", host, endpoint)
        await asyncio.Event().wait()

    async def close(self) -> None:
        """No gateways run yet, so there is nothing to stop."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--own-servers",
        action="store_true",
        help="stop this host's gateway Ganesha processes on an orderly exit",
    )


async def build(context: Context, args: argparse.Namespace) -> GatewayApp:
    return GatewayApp(context)
