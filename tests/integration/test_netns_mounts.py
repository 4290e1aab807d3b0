"""A process the mesh starts in a network namespace (`ip netns exec`, as a gateway's or
share server's Ganesha is) does not keep a filesystem alive after the host unmounts it:
a share's old filesystem must not outlive a revert or a delete there."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sharemesh.network import ensure_namespace, remove_namespace, share_host_mounts


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "share"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _mounts_of(pid: int) -> str:
    return Path(f"/proc/{pid}/mountinfo").read_text()


async def test_a_namespaced_process_lets_go_of_what_the_host_unmounts(mounted: Path) -> None:
    netns = f"sm-test-{secrets.token_hex(4)}"
    await ensure_namespace(netns)
    holder = None
    try:
        await share_host_mounts()
        holder = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "60"])
        ours = Path("/proc/self/ns/mnt").readlink()
        # Until it runs in a mount namespace of its own, with its copy of the share.
        while Path(f"/proc/{holder.pid}/ns/mnt").readlink() == ours or not Path(
            f"/proc/{holder.pid}/cmdline"
        ).read_bytes().startswith(b"sleep"):
            await asyncio.sleep(0.05)
        assert f" {mounted} " in _mounts_of(holder.pid)
        subprocess.run(["umount", str(mounted)], check=True)
        assert f" {mounted} " not in _mounts_of(holder.pid)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        await remove_namespace(netns)
