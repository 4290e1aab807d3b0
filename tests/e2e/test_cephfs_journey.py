"""A tenant's journey on a CephFS backend through a whole mesh, over real NFS (Ganesha
with FSAL_CEPH on a real one-node cluster): create, grant, write, read, read-only, the
size limit (EDQUOT past the quota), grow, a shrink that fits and one that does not,
snapshot and clone (the clone has the data as of the snapshot), delete leaving no
subvolume and no export; a kill -9 of the driver-host and of its Ganesha."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from conformance.harness_cephfs import admin_fill

from sharemesh.client import Client, OperationFailed
from sharemesh.driver_host.drivers._ceph import CephCluster
from sharemesh.launcher import LocalMesh
from sharemesh.runtime.ports import free_port
from sharemesh.v1 import share_service_pb2 as ss
from sharemesh.v1 import snapshot_pb2

from backend_journey import killed_driver_host_and_ganesha_serve_again, resize
from mesh_ops import (
    RO,
    RW,
    TENANT_KEYS,
    Share,
    allocated_gib,
    create_share,
    delete_share,
    grant,
    read,
    running_mesh,
    set_level,
    write,
)

pytestmark = pytest.mark.e2e
CLIENT = "127.0.0.1"
MIB = 1 << 20
GIB = 1 << 30
GROUP = "journey"

CONFIG = (
    """
reconcile_interval_seconds = 2

[[backends]]
name = "ceph"
driver = "cephfs"
state_dir = "{home}/servers"
[backends.options]
conf = "{conf}"
keyring = "{keyring}"
client = "admin"
fs_name = "cephfs"
subvolume_group = "{group}"
state_dir = "{home}/ganesha"
nfs_port = {nfs_port}
mount_port = {mount_port}
"""
    + TENANT_KEYS
)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ceph backend's state: its Ganesha's under `ganesha/ganesha/`."""
    return tmp_path_factory.mktemp("ceph-backend")


@pytest.fixture(scope="module")
async def mesh(
    tmp_path_factory: pytest.TempPathFactory, ceph_cluster: tuple[Path, Path], home: Path
) -> AsyncIterator[LocalMesh]:
    conf, keyring = ceph_cluster
    config = CONFIG.format(
        home=home,
        conf=conf,
        keyring=keyring,
        group=GROUP,
        nfs_port=free_port(),
        mount_port=free_port(),
    )
    async with running_mesh(tmp_path_factory, config) as mesh:
        yield mesh


@pytest.fixture(scope="module")
def admin_ceph(ceph_cluster: tuple[Path, Path]) -> CephCluster:
    """The cluster as its admin sees it (through librados), to look behind the mesh."""
    conf, keyring = ceph_cluster
    return CephCluster(conf, keyring, "admin")


async def subvolume(ceph: CephCluster, share: Share) -> dict[str, object] | None:
    """The share's subvolume as Ceph reports it (quota, bytes used, path), or None."""
    names = await ceph.mgr("fs subvolume ls", vol_name="cephfs", group_name=GROUP)
    if share.uid not in {n["name"] for n in names}:
        return None
    info: dict[str, object] = await ceph.mgr(
        "fs subvolume info", vol_name="cephfs", group_name=GROUP, sub_name=share.uid
    )
    return info


async def get(client: Client, share: Share) -> Share:
    return await client.call(client.shares.GetShare, ss.GetShareRequest(name=share.name))


async def test_the_journey_on_cephfs(
    mesh: LocalMesh,
    alpha: Client,
    admin_ceph: CephCluster,
    ceph_cluster: tuple[Path, Path],
    home: Path,
    tmp_path: Path,
) -> None:
    mib = tmp_path / "one.bin"
    mib.write_bytes(os.urandom(MIB))
    share = await create_share(alpha, "alpha", "journey", size_gib=1)
    assert share.state == Share.ACTIVE
    info = await subvolume(admin_ceph, share)
    assert info is not None and info["bytes_quota"] == GIB
    assert await allocated_gib(mesh, "ceph", "cephfs") == 1
    assert (await write(share, mib, "early.bin"))[0] != 0, "nobody may mount before a rule"

    rule = await grant(alpha, share.name, CLIENT, RW)
    code, out = await write(share, mib, "one.bin")
    assert code == 0, out
    back = tmp_path / "back.bin"
    for version in (4, 3):
        code, out = await read(share, back, "one.bin", version)
        assert code == 0 and back.read_bytes() == mib.read_bytes(), out

    await set_level(alpha, rule.name, RO)
    assert (await write(share, mib, "refused.bin"))[0] != 0, "a READ_ONLY client wrote"
    assert (await read(share, back, "one.bin"))[0] == 0
    await set_level(alpha, rule.name, RW)

    # The limit: the share holds all but 1 MiB (a file the admin made, Ceph counts its
    # size), then 2 MiB more written over NFS do not fit.
    conf, keyring = ceph_cluster
    path = str(info["path"])
    await asyncio.to_thread(admin_fill, conf, keyring, path, "most.bin", GIB - 2 * MIB)
    two = tmp_path / "two.bin"
    two.write_bytes(os.urandom(2 * MIB))
    # CephFS enforces quotas in its clients, from usage the MDS tells them: Ganesha's
    # client may learn of the admin's fill a moment late and let one write overshoot.
    # Writes past the size are refused once it knows, and the overshoot stays small.
    refused = False
    for attempt in range(6):
        code, out = await write(share, two, f"two-{attempt}.bin")
        if code != 0:
            refused = True
            break
        await asyncio.sleep(0.5)
    used = await subvolume(admin_ceph, share) or {}
    assert refused, f"writes past the share's size kept succeeding: {used}"
    assert int(used.get("bytes_used", 0)) <= GIB + 8 * MIB, used

    # A grow lifts it, online; a shrink below what is stored is refused and changes
    # nothing; one that fits is done.
    grown = await resize(alpha, share, 3)
    assert grown.size_gib == 3 and grown.state == Share.ACTIVE
    assert (await subvolume(admin_ceph, share) or {})["bytes_quota"] == 3 * GIB
    code, out = await write(share, two, "after-grow.bin")
    assert code == 0, out
    await asyncio.to_thread(admin_fill, conf, keyring, path, "more.bin", GIB // 2)
    with pytest.raises(OperationFailed) as refused:
        await resize(alpha, share, 1)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.error.reason == "SHRINK_WOULD_LOSE_DATA"
    kept = await get(alpha, share)
    assert kept.size_gib == 3 and kept.state == Share.ACTIVE
    assert (await subvolume(admin_ceph, share) or {})["bytes_quota"] == 3 * GIB
    assert await allocated_gib(mesh, "ceph", "cephfs") == 3
    shrunk = await resize(alpha, share, 2)
    assert shrunk.size_gib == 2 and shrunk.state == Share.ACTIVE
    assert (await subvolume(admin_ceph, share) or {})["bytes_quota"] == 2 * GIB
    assert (await read(share, back, "one.bin"))[0] == 0

    await delete_share(alpha, share.name)
    assert await subvolume(admin_ceph, share) is None, "its subvolume is left"
    assert not list((home / "ganesha/ganesha/exports.d").glob("*.conf")), "an export is left"
    assert (await read(share, back, "one.bin"))[0] != 0
    assert await allocated_gib(mesh, "ceph", "cephfs") == 0


async def test_a_clone_has_the_data_as_of_its_snapshot(
    mesh: LocalMesh, alpha: Client, admin_ceph: CephCluster, tmp_path: Path
) -> None:
    files = {}
    for label in ("A", "B"):
        files[label] = tmp_path / f"{label}.bin"
        files[label].write_bytes(label.encode() * 16 + os.urandom(256 << 10))
    share = await create_share(alpha, "alpha", "origin")
    await grant(alpha, share.name, CLIENT, RW)
    assert (await write(share, files["A"], "data.bin"))[0] == 0
    op = await alpha.call(
        alpha.shares.CreateSnapshot,
        ss.CreateSnapshotRequest(
            parent=share.name, snapshot_id="s1", snapshot=snapshot_pb2.Snapshot()
        ),
    )
    taken = await alpha.wait(op, snapshot_pb2.Snapshot)
    assert (await write(share, files["B"], "later.bin"))[0] == 0

    started = time.monotonic()
    op = await alpha.call(
        alpha.shares.CreateShare,
        ss.CreateShareRequest(
            parent="projects/alpha", share_id="copy", share=Share(source_snapshot=taken.name)
        ),
    )
    clone = await alpha.wait(op, Share)
    print(f"\ncephfs clone through the mesh: {time.monotonic() - started:.2f}s")
    assert clone.state == Share.ACTIVE
    await grant(alpha, clone.name, CLIENT, RW)
    back = tmp_path / "back.bin"
    assert (await read(clone, back, "data.bin"))[0] == 0
    assert back.read_bytes() == files["A"].read_bytes(), "the clone is not the snapshot"
    assert (await read(clone, back, "later.bin"))[0] != 0, "the clone has a later write"
    assert (await read(share, back, "later.bin"))[0] == 0
    assert back.read_bytes() == files["B"].read_bytes(), "the original lost its write"

    await delete_share(alpha, clone.name)
    await alpha.wait(
        await alpha.call(alpha.shares.DeleteSnapshot, ss.DeleteSnapshotRequest(name=taken.name))
    )
    await delete_share(alpha, share.name)
    for gone in (share, clone):
        assert await subvolume(admin_ceph, gone) is None


async def test_a_killed_driver_host_and_ganesha_serve_again(
    mesh: LocalMesh, alpha: Client, home: Path, tmp_path: Path
) -> None:
    await killed_driver_host_and_ganesha_serve_again(mesh, alpha, "ceph", home, tmp_path, within=60)
