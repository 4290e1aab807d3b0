"""Tenant actions the end-to-end tests repeat: make a share, grant a host, move bytes
through its export, and read what the mesh has allocated."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2, status_pb2

from sharemesh.client import Client
from sharemesh.launcher import LocalMesh
from sharemesh.runtime.coordination import Store, connect, keys
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import (
    access_rule_pb2,
    pool_service_pb2,
    pool_service_pb2_grpc,
    share_network_pb2,
    share_pb2,
    share_type_pb2,
    share_type_service_pb2_grpc,
    snapshot_pb2,
)
from sharemesh.v1 import share_network_service_pb2 as sns
from sharemesh.v1 import share_service_pb2 as ss
from sharemesh.v1 import share_type_service_pb2 as sts

from support import assert_host_clean, ensure_rpcbind, nfs_read, nfs_url, nfs_write, run

Share = share_pb2.Share
AccessRule = access_rule_pb2.AccessRule
RW, RO = AccessRule.READ_WRITE, AccessRule.READ_ONLY
TENANT_CIDR = "10.31.0.0/24"

# The keys of the e2e tests' two tenants. Configs end with them: TOML keys after a
# table header belong to that table, so top-level settings must come first.
TENANT_KEYS = """
[[api.tokens]]
token = "alpha-key"
project = "alpha"

[[api.tokens]]
token = "beta-key"
project = "beta"
"""

# Two local backends for tenant networks: `local` serves them through the host's
# gateway, `servers` from share servers of its own; share types pick one or the other.
NETWORK_BACKENDS = """
[[backends]]
name = "local"
[backends.options]
capacity_gib = 6

[[backends]]
name = "servers"
[backends.options]
capacity_gib = 6
driver_handles_share_servers = true
"""
NETWORK_TYPES = {"via-gateway": "<is> False", "via-server": "<is> True"}

# One mesh with the three real backends, each tagged with a custom capability
# (`backend_kind`) that share types can pick it by.
THREE_BACKENDS = (
    """
reconcile_interval_seconds = 2

[[backends]]
name = "local"
driver = "local"
[backends.options]
capacity_gib = {local_gib}
capabilities = {{ backend_kind = "local" }}

[[backends]]
name = "ceph"
driver = "cephfs"
[backends.options]
conf = "{conf}"
keyring = "{keyring}"
client = "admin"
fs_name = "cephfs"
subvolume_group = "{group}"
max_over_subscription_ratio = {ceph_ratio}
capabilities = {{ backend_kind = "ceph" }}

[[backends]]
name = "gluster"
driver = "glusterfs"
[backends.options]
server = "127.0.0.1"
volume = "{volume}"
capabilities = {{ backend_kind = "gluster" }}
"""
    + TENANT_KEYS
)


def three_backends(
    conf: str,
    keyring: str,
    volume: str,
    *,
    local_gib: int,
    group: str,
    ceph_ratio: float = 1.0,
) -> str:
    """The TOML of a mesh with `local`, `cephfs` and `glusterfs` backends."""
    return THREE_BACKENDS.format(
        conf=conf,
        keyring=keyring,
        volume=volume,
        local_gib=local_gib,
        group=group,
        ceph_ratio=ceph_ratio,
    )


# The mesh of most e2e modules: one local backend, and keys for two projects.
MESH_CONFIG = (
    """
reconcile_interval_seconds = 2


[[backends]]
name = "local"
driver = "local"
[backends.options]
capacity_gib = {capacity_gib}
"""
    + TENANT_KEYS
)


async def pool_of(admin: Client, share: Share) -> str:
    """Where a share landed: an admin field, which tenants never see."""
    return (await admin.call(admin.shares.GetShare, ss.GetShareRequest(name=share.name))).pool


async def create_share(
    client: Client, project: str, share_id: str, size_gib: int = 1, request_id: str = ""
) -> Share:
    op = await client.call(
        client.shares.CreateShare,
        ss.CreateShareRequest(
            parent=f"projects/{project}",
            share_id=share_id,
            request_id=request_id,
            share=Share(size_gib=size_gib),
        ),
    )
    return await client.wait(op, Share)


async def delete_share(client: Client, name: str) -> None:
    await client.wait(
        await client.call(client.shares.DeleteShare, ss.DeleteShareRequest(name=name))
    )


async def grant(client: Client, share: str, access_to: str, level: int = RW) -> AccessRule:
    op = await client.call(
        client.shares.CreateAccessRule,
        ss.CreateAccessRuleRequest(
            parent=share, access_rule=AccessRule(access_to=access_to, access_level=level)
        ),
    )
    return await client.wait(op, AccessRule)


async def set_level(client: Client, rule: str, level: int) -> AccessRule:
    op = await client.call(
        client.shares.UpdateAccessRule,
        ss.UpdateAccessRuleRequest(
            access_rule=AccessRule(name=rule, access_level=level),
            update_mask=field_mask_pb2.FieldMask(paths=["access_level"]),
        ),
    )
    return await client.wait(op, AccessRule)


async def revoke(client: Client, rule: str) -> None:
    await client.wait(
        await client.call(client.shares.DeleteAccessRule, ss.DeleteAccessRuleRequest(name=rule))
    )


def _where(share: Share | snapshot_pb2.Snapshot) -> tuple[str, str, int, int]:
    location = share.export_locations[0]
    host, pseudo = location.path.split(":", 1)
    return host, pseudo, location.nfs_port, location.mount_port


async def write(share: Share | snapshot_pb2.Snapshot, src: Path, name: str) -> tuple[int, str]:
    host, pseudo, nfs_port, mount_port = _where(share)
    return await nfs_write(src, host, pseudo, name, nfs_port, mount_port)


async def read(
    share: Share | snapshot_pb2.Snapshot, dst: Path, name: str, version: int = 4
) -> tuple[int, str]:
    host, pseudo, nfs_port, mount_port = _where(share)
    dst.unlink(missing_ok=True)
    return await nfs_read(dst, host, pseudo, name, nfs_port, version, mount_port)


async def allocated_gib(mesh: LocalMesh, backend: str = "local", pool: str = "default") -> int:
    assert mesh.etcd is not None
    async with connect(mesh.etcd.endpoint) as client:
        store = Store(client)
        found = await store.get(
            keys.allocation_key(store.root, backend, pool), records_pb2.PoolAllocation
        )
        return found.value.allocated_gib if found else 0


async def live_shares(mesh: LocalMesh) -> list[records_pb2.ShareRecord]:
    assert mesh.etcd is not None
    async with connect(mesh.etcd.endpoint) as client:
        store = Store(client)
        return [f.value for f in await store.scan(store.root + "shares/", records_pb2.ShareRecord)]


async def create_network(client: Client, net_id: str, cidr: str = TENANT_CIDR) -> str:
    op = await client.call(
        client.networks.CreateShareNetwork,
        sns.CreateShareNetworkRequest(
            parent="projects/alpha",
            share_network_id=net_id,
            share_network=share_network_pb2.ShareNetwork(cidr=cidr),
        ),
    )
    return (await client.wait(op, share_network_pb2.ShareNetwork)).name


async def attach(client: Client, network: str, netns: str, address: str) -> None:
    op = await client.call(
        client.networks.CreateAttachment,
        sns.CreateAttachmentRequest(
            parent=network,
            attachment_id=netns.replace("_", "-"),
            attachment=share_network_pb2.Attachment(netns=netns, address=address),
        ),
    )
    await client.wait(op)


async def nfs_in(netns: str | None, *args: str) -> int:
    prefix = ("ip", "netns", "exec", netns) if netns else ()
    code, _ = await run(*prefix, "timeout", "8", "nfs-cp", *args)
    return code


def nfs_location(share: Share, name: str, version: int) -> str:
    location = share.export_locations[0]
    host, pseudo = location.path.split(":", 1)
    return nfs_url(host, pseudo, name, version, location.nfs_port, location.mount_port)


async def read_in(netns: str | None, share: Share, dst: Path) -> int:
    dst.unlink(missing_ok=True)
    return await nfs_in(netns, nfs_location(share, "data.bin", 4), str(dst))


@contextlib.asynccontextmanager
async def running_mesh(
    tmp_path_factory: pytest.TempPathFactory, config: str, **options: object
) -> AsyncIterator[LocalMesh]:
    """A whole mesh from `config` (TOML) for one test module; afterwards the host must be
    clean of its mounts, loop devices and processes."""
    ensure_rpcbind()
    state = tmp_path_factory.mktemp("mesh")
    (state / "mesh.toml").write_text(config)
    async with LocalMesh(
        state, state / "mesh.toml", api_port=0, lease_ttl_seconds=3, **options
    ) as mesh:  # type: ignore[arg-type]
        yield mesh
    assert_host_clean(state)


def error_reason(error: grpc.aio.AioRpcError) -> str:
    """The `ErrorInfo.reason` of a refused call's rich status ('' if it has none)."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for packed in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if packed.Unpack(info):
                    return info.reason
    return ""


async def refused(call: Awaitable[object], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """The error of a call that must be refused with `code`."""
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == code, error.value.details()
    return error.value


async def project_usage(mesh: LocalMesh, project: str) -> records_pb2.ProjectUsage:
    assert mesh.etcd is not None
    async with connect(mesh.etcd.endpoint) as client:
        store = Store(client)
        found = await store.get(keys.usage_key(store.root, project), records_pb2.ProjectUsage)
        return found.value if found else records_pb2.ProjectUsage()


async def all_pools_registered(admin: Client, pools: set[str], timeout: float = 60) -> None:
    """The mesh answers once each driver-host serves, but a driver-host registers its pool
    only after its first report of the backend (a Ceph cluster's can take seconds); until
    then the scheduler refuses a share only that backend could hold."""
    stub = pool_service_pb2_grpc.PoolServiceStub(admin._channel)
    deadline = time.monotonic() + timeout
    while True:
        view = await stub.ListPools(
            pool_service_pb2.ListPoolsRequest(parent="backends/-"), metadata=admin.metadata
        )
        if {p.name for p in view.pools} >= pools:
            return
        assert time.monotonic() < deadline, f"pools registered: {[p.name for p in view.pools]}"
        await asyncio.sleep(0.2)


async def create_share_types(admin: Client, types: dict[str, dict[str, str]]) -> None:
    """Share types by id, each with its extra specs."""
    stub = share_type_service_pb2_grpc.ShareTypeServiceStub(admin._channel)
    for type_id, extra_specs in types.items():
        await stub.CreateShareType(
            sts.CreateShareTypeRequest(
                share_type_id=type_id,
                share_type=share_type_pb2.ShareType(extra_specs=extra_specs),
            ),
            metadata=admin.metadata,
        )
