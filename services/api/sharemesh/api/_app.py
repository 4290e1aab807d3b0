"""The api process: public services over one etcd session."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import grpc
from google.longrunning import operations_pb2_grpc, operations_proto_pb2

from sharemesh.runtime.config import ApiConfig, split_host_port
from sharemesh.runtime.errors import FailedPrecondition
from sharemesh.runtime.peers import Peers
from sharemesh.runtime.process import Context
from sharemesh.runtime.server import Binding
from sharemesh.v1 import (
    pool_service_pb2,
    pool_service_pb2_grpc,
    share_network_service_pb2,
    share_network_service_pb2_grpc,
    share_service_pb2,
    share_service_pb2_grpc,
    share_type_service_pb2,
    share_type_service_pb2_grpc,
)

from ._access_rules import AccessRules
from ._auth import Authenticator
from ._cache import WatchCache
from ._operations import Operations
from ._pools import Pools
from ._share_networks import ShareNetworks
from ._share_types import ShareTypes
from ._shares import Shares
from ._snapshots import Snapshots


class ShareService(Shares, AccessRules, Snapshots, share_service_pb2_grpc.ShareServiceServicer):
    """`sharemesh.v1.ShareService`: shares, their access rules and their snapshots."""


def _service_name(module, name: str) -> str:  # type: ignore[no-untyped-def]
    return module.DESCRIPTOR.services_by_name[name].full_name


def _credentials(config: ApiConfig) -> grpc.ServerCredentials | None:
    """TLS when configured; listening beyond loopback without it is refused."""
    if config.tls_cert_file:
        key = Path(config.tls_key_file).read_bytes()
        return grpc.ssl_server_credentials([(key, Path(config.tls_cert_file).read_bytes())])
    host = split_host_port(config.listen)[0]
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise FailedPrecondition(
            f"the API listens on {config.listen} beyond loopback: "
            "configure api.tls_cert_file and api.tls_key_file"
        )
    return None


class ApiApp:
    def __init__(self, context: Context) -> None:
        self.credentials = _credentials(context.config.api)
        self.peers = Peers(context.store)
        auth = Authenticator(context.config.api)
        self.cache = cache = WatchCache(context.store)
        self.bindings = [
            Binding(
                _service_name(share_service_pb2, "ShareService"),
                share_service_pb2_grpc.add_ShareServiceServicer_to_server,
                ShareService(context.store, self.peers, auth, cache, context.config.quotas),
                auth.authenticate,
            ),
            Binding(
                _service_name(share_type_service_pb2, "ShareTypeService"),
                share_type_service_pb2_grpc.add_ShareTypeServiceServicer_to_server,
                ShareTypes(context.store, auth, cache),
                auth.authenticate,
            ),
            Binding(
                _service_name(share_network_service_pb2, "ShareNetworkService"),
                share_network_service_pb2_grpc.add_ShareNetworkServiceServicer_to_server,
                ShareNetworks(context.store, self.peers, auth, cache),
                auth.authenticate,
            ),
            Binding(
                _service_name(pool_service_pb2, "PoolService"),
                pool_service_pb2_grpc.add_PoolServiceServicer_to_server,
                Pools(context.store, self.peers, auth),
                auth.authenticate,
            ),
            Binding(
                _service_name(operations_proto_pb2, "Operations"),
                operations_pb2_grpc.add_OperationsServicer_to_server,
                Operations(context.store, auth, cache),
                auth.authenticate,
            ),
        ]

    async def run(self, endpoint: str) -> None:
        """Keeps the watch cache the lists read current (the api holds no other state)."""
        await self.cache.run()

    async def close(self) -> None:
        await self.peers.close()


async def build(context: Context, args: argparse.Namespace) -> ApiApp:
    return ApiApp(context)
