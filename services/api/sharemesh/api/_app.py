"""The api process: public services over one etcd session."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
from pathlib import Path

import grpc
from google.longrunning import operations_pb2_grpc, operations_proto_pb2

from sharemesh.runtime import quota
from sharemesh.runtime.config import ApiConfig, split_host_port
from sharemesh.runtime.errors import FailedPrecondition
from sharemesh.runtime.peers import Peers
from sharemesh.runtime.process import Context
from sharemesh.runtime.server import Binding
from sharemesh.v1 import (
    pool_service_pb2,
    pool_service_pb2_grpc,
    project_service_pb2,
    project_service_pb2_grpc,
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
from ._projects import Projects
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
        store = context.store
        self.auth = auth = Authenticator(context.config.api, store)
        self.limits = quota.LiveLimits(store, context.config.quotas)
        self.cache = cache = WatchCache(store)
        services = [
            (
                share_service_pb2,
                "ShareService",
                share_service_pb2_grpc.add_ShareServiceServicer_to_server,
                ShareService(store, self.peers, auth, cache, self.limits.quotas),
            ),
            (
                share_type_service_pb2,
                "ShareTypeService",
                share_type_service_pb2_grpc.add_ShareTypeServiceServicer_to_server,
                ShareTypes(store, auth, cache),
            ),
            (
                share_network_service_pb2,
                "ShareNetworkService",
                share_network_service_pb2_grpc.add_ShareNetworkServiceServicer_to_server,
                ShareNetworks(store, self.peers, auth, cache, self.limits.quotas),
            ),
            (
                pool_service_pb2,
                "PoolService",
                pool_service_pb2_grpc.add_PoolServiceServicer_to_server,
                Pools(store, self.peers, auth),
            ),
            (
                project_service_pb2,
                "ProjectService",
                project_service_pb2_grpc.add_ProjectServiceServicer_to_server,
                Projects(store, auth, cache, context.config.quotas),
            ),
            (
                operations_proto_pb2,
                "Operations",
                operations_pb2_grpc.add_OperationsServicer_to_server,
                Operations(store, auth, cache),
            ),
        ]
        # Every public method checks the caller's role (`_auth.REQUIRED`) first.
        self.bindings = [
            Binding(
                _service_name(module, name),
                add,
                auth.guard(servicer, module.DESCRIPTOR.services_by_name[name]),
                auth.authenticate,
            )
            for module, name, add, servicer in services
        ]

    async def run(self, endpoint: str) -> None:
        """Keeps the watch cache the lists read, the API keys and the quota limits
        current (the api holds no other state)."""
        await asyncio.gather(self.cache.run(), self.auth.run(), self.limits.run())

    async def close(self) -> None:
        await self.peers.close()


async def build(context: Context, args: argparse.Namespace) -> ApiApp:
    return ApiApp(context)
