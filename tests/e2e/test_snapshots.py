"""Snapshots on the local backend, through real NFS: the data a snapshot keeps, a share
made from it, a revert to it, its read-only export; the CLI; and kill -9 of the
driver-host in the middle of each, after which everything ends as it would have, and
no filesystem stays frozen."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import grpc
import pytest

from sharemesh.client import Client
from sharemesh.launcher import LocalMesh
from sharemesh.v1 import share_service_pb2 as ss
from sharemesh.v1 import snapshot_pb2

from mesh_ops import RW, Share, create_share, delete_share, grant, read, refused, write
from support import pid_alive, run

pytestmark = pytest.mark.e2e

Snapshot = snapshot_pb2.Snapshot
CLIENT = "127.0.0.1"
DRIVER_HOST = "driver-host-local"
VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Two different contents, A and B, of 256 KiB each."""
    made = {}
    for label in ("A", "B"):
        made[label] = tmp_path / f"{label}.bin"
        made[label].write_bytes(label.encode() * 16 + os.urandom(256 << 10))
    return made


async def snapshot(client: Client, share: str, snapshot_id: str) -> Snapshot:
    op = await client.call(
        client.shares.CreateSnapshot,
        ss.CreateSnapshotRequest(parent=share, snapshot_id=snapshot_id, snapshot=Snapshot()),
    )
    return await client.wait(op, Snapshot)


async def clone(client: Client, share_id: str, source: str) -> Share:
    op = await client.call(
        client.shares.CreateShare,
        ss.CreateShareRequest(
            parent="projects/alpha", share_id=share_id, share=Share(source_snapshot=source)
        ),
    )
    return await client.wait(op, Share)


async def revert(client: Client, share: str, source: str) -> Share:
    op = await client.call(
        client.shares.RevertShare, ss.RevertShareRequest(name=share, snapshot=source)
    )
    return await client.wait(op, Share)


async def content(where: Share | Snapshot, name: str, tmp_path: Path) -> bytes | None:
    """What a client reads of a file, or None if it cannot."""
    dst = tmp_path / f"read-{os.urandom(4).hex()}"
    code, _ = await read(where, dst, name)
    return dst.read_bytes() if code == 0 else None


async def frozen(mesh: LocalMesh, share: Share) -> bool:
    """Whether the share's filesystem is frozen: a thaw of a filesystem that is not
    frozen fails (EINVAL), so a thaw that succeeds means it was (and it no longer is)."""
    mountpoint = mesh.state_dir / "pools" / "local" / "mnt" / share.uid
    code, _ = await run("fsfreeze", "--unfreeze", str(mountpoint))
    return code == 0


async def test_a_snapshot_keeps_its_data_for_a_clone_a_revert_and_a_read_only_mount(
    mesh: LocalMesh, alpha: Client, files: dict[str, Path], tmp_path: Path
) -> None:
    share = await create_share(alpha, "alpha", "snapped", size_gib=1)
    await grant(alpha, share.name, CLIENT, RW)
    assert (await write(share, files["A"], "data.bin"))[0] == 0

    taken = await snapshot(alpha, share.name, "before")
    assert taken.state == Snapshot.READY and taken.size_gib == 1
    # libnfs's nfs-cp never overwrites a file (it fails on an existing one), so B goes
    # into a file of its own: what changed after the snapshot is the file B.
    assert (await write(share, files["B"], "later.bin"))[0] == 0

    copy = await clone(alpha, "from-before", taken.name)
    assert copy.state == Share.ACTIVE and copy.size_gib == 1
    assert copy.export_locations[0].path != share.export_locations[0].path
    await grant(alpha, copy.name, CLIENT, RW)
    assert await content(copy, "data.bin", tmp_path) == files["A"].read_bytes()
    assert await content(copy, "later.bin", tmp_path) is None, "the clone is as of the snapshot"
    assert await content(share, "later.bin", tmp_path) == files["B"].read_bytes()
    # The clone is a share of its own: what is written there stays there.
    assert (await write(copy, files["B"], "clone-only.bin"))[0] == 0
    assert await content(share, "clone-only.bin", tmp_path) is None

    # The snapshot's own export: A, read-only, for the share's rule clients.
    assert taken.export_locations, "the local backend offers mountable snapshots"
    assert await content(taken, "data.bin", tmp_path) == files["A"].read_bytes()
    assert await content(taken, "later.bin", tmp_path) is None
    code, out = await write(taken, files["B"], "refused.bin")
    assert code != 0 and "ROFS" in out, out

    reverted = await revert(alpha, share.name, taken.name)
    assert reverted.state == Share.ACTIVE and reverted.size_gib == 1
    assert await content(share, "data.bin", tmp_path) == files["A"].read_bytes()
    assert await content(share, "later.bin", tmp_path) is None, "the revert undid B"
    assert (await write(share, files["B"], "after-revert.bin"))[0] == 0, "still read-write"

    await delete_share(alpha, copy.name)
    await refused(
        alpha.call(alpha.shares.DeleteShare, ss.DeleteShareRequest(name=share.name)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    await alpha.wait(
        await alpha.call(
            alpha.shares.DeleteShare, ss.DeleteShareRequest(name=share.name, force=True)
        )
    )
    pool = mesh.state_dir / "pools" / "local"
    leftovers = [p.name for p in pool.rglob("*") if share.uid in p.name or taken.uid in p.name]
    assert not leftovers, leftovers


async def test_the_cli_takes_lists_reverts_and_deletes_snapshots(
    mesh: LocalMesh, alpha: Client
) -> None:
    env = {
        **os.environ,
        "SHAREMESH_ENDPOINT": mesh.api_address,
        "SHAREMESH_TOKEN": "alpha-key",
        "SHAREMESH_PROJECT": "alpha",
    }

    async def cli(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "sharemesh"),
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await process.communicate()
        return process.returncode or 0, out.decode()

    code, out = await cli("share", "create", "cli-snapped", "--size", "1")
    assert code == 0 and "ACTIVE" in out, out
    code, out = await cli("snapshot", "create", "cli-snapped", "s1", "--label", "why=test")
    assert code == 0 and "READY" in out and "why" in out, out
    code, out = await cli("snapshot", "list", "cli-snapped", "--json")
    assert code == 0, out
    (listed,) = json.loads(out)
    assert listed["name"] == "projects/alpha/shares/cli-snapped/snapshots/s1"
    assert listed["state"] == "READY"
    code, out = await cli("share", "revert", "cli-snapped", "--snapshot", "s1")
    assert code == 0 and "ACTIVE" in out, out
    code, out = await cli(
        "share", "create", "cli-clone", "--from-snapshot", listed["name"], "--json"
    )
    assert code == 0 and json.loads(out)["state"] == "ACTIVE", out
    code, out = await cli("share", "delete", "cli-snapped")
    assert code == 1 and "FAILED_PRECONDITION" in out and "force" in out, out
    code, out = await cli("snapshot", "delete", "cli-snapped/s1")
    assert code == 0, out
    for share_id in ("cli-snapped", "cli-clone"):
        code, out = await cli("share", "delete", share_id)
        assert code == 0, out


async def _kill_driver_host(mesh: LocalMesh) -> None:
    child = mesh.children[DRIVER_HOST]
    async with asyncio.timeout(30):
        while not (child.pid and pid_alive(child.pid)):
            await asyncio.sleep(0.02)
    pid = child.pid
    os.kill(pid, 9)
    while pid_alive(pid):
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15])
async def test_kill_9_of_the_driver_host_mid_snapshot_clone_and_revert_ends_as_asked(
    mesh: LocalMesh, alpha: Client, files: dict[str, Path], tmp_path: Path, delay: float
) -> None:
    share = await create_share(alpha, "alpha", f"crash-{int(delay * 1000)}", size_gib=1)
    await grant(alpha, share.name, CLIENT, RW)
    assert (await write(share, files["A"], "data.bin"))[0] == 0

    # Snapshot, with the driver-host killed `delay` seconds into it.
    op = await alpha.call(
        alpha.shares.CreateSnapshot,
        ss.CreateSnapshotRequest(parent=share.name, snapshot_id="s", snapshot=Snapshot()),
    )
    await asyncio.sleep(delay)
    await _kill_driver_host(mesh)
    taken = await alpha.wait(op, Snapshot)
    assert taken.state == Snapshot.READY
    assert not await frozen(mesh, share), "the share's filesystem stayed frozen"
    assert (await write(share, files["B"], "later.bin"))[0] == 0

    # A share made from it, killed the same way.
    op = await alpha.call(
        alpha.shares.CreateShare,
        ss.CreateShareRequest(
            parent="projects/alpha",
            share_id=f"crash-clone-{int(delay * 1000)}",
            share=Share(source_snapshot=taken.name),
        ),
    )
    await asyncio.sleep(delay)
    await _kill_driver_host(mesh)
    copy = await alpha.wait(op, Share)
    assert copy.state == Share.ACTIVE
    await grant(alpha, copy.name, CLIENT, RW)
    assert await content(copy, "data.bin", tmp_path) == files["A"].read_bytes()
    assert await content(copy, "later.bin", tmp_path) is None

    # A revert, killed the same way.
    op = await alpha.call(
        alpha.shares.RevertShare, ss.RevertShareRequest(name=share.name, snapshot=taken.name)
    )
    await asyncio.sleep(delay)
    await _kill_driver_host(mesh)
    reverted = await alpha.wait(op, Share)
    assert reverted.state == Share.ACTIVE
    assert await content(share, "data.bin", tmp_path) == files["A"].read_bytes()
    assert await content(share, "later.bin", tmp_path) is None
    assert not await frozen(mesh, share)
    assert await content(taken, "data.bin", tmp_path) == files["A"].read_bytes()

    await delete_share(alpha, copy.name)
    await alpha.wait(
        await alpha.call(
            alpha.shares.DeleteShare, ss.DeleteShareRequest(name=share.name, force=True)
        )
    )
