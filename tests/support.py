"""What tests share: running commands, a real NFS client (libnfs `nfs-cp`), and
checks that the host is left clean."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path


async def run(*argv: str, timeout: float = 60.0) -> tuple[int, str]:
    """Runs a command; (exit code, stdout+stderr)."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode or 0, out.decode(errors="replace")


def nfs_url(
    host: str, pseudo: str, name: str, version: int, nfs_port: int, mount_port: int = 0
) -> str:
    url = f"nfs://{host}{pseudo.rstrip('/')}/{name}?version={version}&nfsport={nfs_port}"
    return url + (f"&mountport={mount_port}" if version == 3 else "")


async def nfs_write(
    src: Path, host: str, pseudo: str, name: str, nfs_port: int, mount_port: int
) -> tuple[int, str]:
    """Writes over NFSv3 (libnfs cannot write more than ~4 KB over v4)."""
    return await run("nfs-cp", str(src), nfs_url(host, pseudo, name, 3, nfs_port, mount_port))


async def nfs_read(
    dst: Path,
    host: str,
    pseudo: str,
    name: str,
    nfs_port: int,
    version: int = 4,
    mount_port: int = 0,
) -> tuple[int, str]:
    return await run("nfs-cp", nfs_url(host, pseudo, name, version, nfs_port, mount_port), str(dst))


def ensure_rpcbind() -> None:
    """rpcbind is host-wide; the install step starts it, this only covers a bare run."""
    if subprocess.run(["pgrep", "-x", "rpcbind"], capture_output=True).returncode != 0:
        subprocess.run(["rpcbind", "-w"], check=True)


def processes_mentioning(text: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", text], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/mounts").read_text().splitlines() if f" {path}" in line]


def loops_under(path: Path) -> list[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(path) in line]


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (PID 1 here may be slow to reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def assert_host_clean(state: Path) -> None:
    """No mount, loop device or process of the mesh under `state` is left."""
    assert not mounts_under(state), mounts_under(state)
    assert not loops_under(state), loops_under(state)
    assert not processes_mentioning(str(state)), processes_mentioning(str(state))


@contextlib.contextmanager
def guest_namespaces(*roles: str) -> Iterator[dict[str, str]]:
    """Network namespaces standing for tenants' guests, one per role, with names unique
    to this run; removed afterwards, whatever happened."""
    suffix = uuid.uuid4().hex[:6]
    made = {role: f"t{suffix}-{role}" for role in roles}
    try:
        for netns in made.values():
            subprocess.run(["ip", "netns", "add", netns], check=True)
            subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        yield made
    finally:
        for netns in made.values():
            subprocess.run(["ip", "netns", "del", netns], check=False)


def gluster_brick_address(volume: str) -> str:
    """Where the development volume's brick is: its storage address, not the loopback."""
    info = subprocess.run(
        ["gluster", "--mode=script", "volume", "info", volume],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (brick,) = [line for line in info.splitlines() if line.startswith("Brick1:")]
    return brick.split()[1].split(":")[0]
