"""Gateway data-path benchmark on a real local mesh (etcd, services, Ganesha, XFS loops).

One share on a tenant network, served by this host's gateway into a client namespace
the bench makes, and one share without a network, served by the backend's own flat
export on 127.0.0.1 (the baseline, measured in the same run). Prints copy throughput
(NFSv3 write, NFSv4 read; best and median MiB/s) through each and the ratio
gateway/direct, then the time from `kill -9` of the gateway's Ganesha to the first
successful read from the client namespace.

    .venv/bin/python bench/bench_gateway.py [--size-mib 256] [--rounds 3] [--kills 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# isort: off
# First, before anything imports grpc: children the in-process launcher forks crash
# unless the runtime turned off gRPC's fork handlers (see tests/conftest.py).
import sharemesh.runtime  # noqa: F401
import grpc
from sharemesh.client import Client, OperationFailed
from sharemesh.launcher import LocalMesh
from sharemesh.v1 import access_rule_pb2, share_network_pb2, share_pb2
from sharemesh.v1 import share_network_service_pb2 as sns
from sharemesh.v1 import share_service_pb2 as ss

CIDR = "10.41.0.0/24"
CLIENT_ADDRESS = "10.41.0.10"
PROJECT = "projects/bench"
RW = access_rule_pb2.AccessRule.READ_WRITE
CONFIG = '[[backends]]\nname = "local"\n[backends.options]\ncapacity_gib = 8\n'


@dataclass
class Made:
    """What the bench created through the API, to remove in reverse order."""

    shares: list[str] = field(default_factory=list)
    attachments: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)


@dataclass
class Target:
    """Where a share is exported, and the namespace a client reaches it from."""

    host: str
    pseudo: str
    nfs_port: int
    mount_port: int
    netns: str | None

    def url(self, name: str, version: int) -> str:
        url = f"nfs://{self.host}{self.pseudo.rstrip('/')}/{name}?version={version}"
        url += f"&nfsport={self.nfs_port}"
        return url + (f"&mountport={self.mount_port}" if version == 3 else "")

    async def nfs_cp(self, src: str, dst: str, timeout: float = 300.0) -> tuple[int, str]:
        prefix = ("ip", "netns", "exec", self.netns) if self.netns else ()
        argv = (*prefix, "timeout", str(int(timeout)), "nfs-cp", src, dst)
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await process.communicate()
        return process.returncode or 0, out.decode(errors="replace").strip()

    async def ls(self) -> tuple[int, str]:
        prefix = ("ip", "netns", "exec", self.netns) if self.netns else ()
        url = f"nfs://{self.host}{self.pseudo}?version=3&nfsport={self.nfs_port}"
        url += f"&mountport={self.mount_port}"
        process = await asyncio.create_subprocess_exec(
            *prefix,
            "timeout",
            "10",
            "nfs-ls",
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await process.communicate()
        return process.returncode or 0, out.decode(errors="replace").strip()

    async def write(self, src: Path, name: str, timeout: float = 300.0) -> tuple[int, str]:
        return await self.nfs_cp(str(src), self.url(name, 3), timeout)

    async def read(self, name: str, dst: Path, timeout: float = 300.0) -> tuple[int, str]:
        dst.unlink(missing_ok=True)
        return await self.nfs_cp(self.url(name, 4), str(dst), timeout)


def target(share: share_pb2.Share, netns: str | None) -> Target:
    location = share.export_locations[0]
    host, pseudo = location.path.split(":", 1)
    return Target(host, pseudo, location.nfs_port, location.mount_port, netns)


def ensure_rpcbind() -> None:
    if subprocess.run(["pgrep", "-x", "rpcbind"], capture_output=True).returncode != 0:
        subprocess.run(["rpcbind", "-w"], check=True)


def rates(seconds: list[float], size_mib: int) -> str:
    mib_s = [size_mib / s for s in seconds]
    each = " ".join(f"{r:7.1f}" for r in mib_s)
    return f"best {max(mib_s):7.1f} MiB/s  median {statistics.median(mib_s):7.1f} MiB/s  ({each})"


async def create_share(
    client: Client, made: Made, share_id: str, network: str = ""
) -> share_pb2.Share:
    op = await client.call(
        client.shares.CreateShare,
        ss.CreateShareRequest(
            parent=PROJECT,
            share_id=share_id,
            share=share_pb2.Share(size_gib=2, share_network=network),
        ),
    )
    # Accepted: from here on it is ours to delete, whether or not it comes up.
    made.shares.append(f"{PROJECT}/shares/{share_id}")
    share = await client.wait(op, share_pb2.Share)
    assert share is not None and share.state == share_pb2.Share.ACTIVE, share
    return share


async def grant(client: Client, share: str, access_to: str) -> None:
    op = await client.call(
        client.shares.CreateAccessRule,
        ss.CreateAccessRuleRequest(
            parent=share,
            access_rule=access_rule_pb2.AccessRule(access_to=access_to, access_level=RW),
        ),
    )
    await client.wait(op, access_rule_pb2.AccessRule)


async def until_ok(attempt, what: str, limit: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Exports are live shortly after their rules; waits for the first success."""
    deadline = time.monotonic() + limit
    while True:
        code, out = await attempt()
        if code == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} still failing after {limit:.0f}s: {out}")
        await asyncio.sleep(0.2)


async def throughput(
    via: Target, label: str, src: Path, scratch: Path, rounds: int, size_mib: int
) -> tuple[list[float], list[float]]:
    writes: list[float] = []
    reads: list[float] = []
    names = [f"{label}-{uuid.uuid4().hex[:8]}.bin" for _ in range(rounds)]
    for name in names:
        started = time.perf_counter()
        code, out = await via.write(src, name)
        writes.append(time.perf_counter() - started)
        if code != 0:
            raise RuntimeError(f"{label} write {name} failed ({code}): {out}")
    dst = scratch / f"{label}-back.bin"
    for i, name in enumerate(names):
        dst.unlink(missing_ok=True)
        started = time.perf_counter()
        code, out = await via.read(name, dst)
        reads.append(time.perf_counter() - started)
        if code != 0:
            raise RuntimeError(f"{label} read {name} failed ({code}): {out}")
        if dst.stat().st_size != src.stat().st_size or (
            i == 0 and dst.read_bytes() != src.read_bytes()
        ):
            raise RuntimeError(f"{label} read {name} returned other bytes")
    dst.unlink(missing_ok=True)
    return writes, reads


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def gateway_ganesha(state: Path, not_pid: int = 0, limit: float = 30.0) -> int:
    """The gateway Ganesha's pid, once it is a live process other than `not_pid`."""
    deadline = time.monotonic() + limit
    while True:
        pidfiles = sorted((state / "gateway").glob("*/ganesha.pid"))
        if len(pidfiles) > 1:
            raise RuntimeError(f"more than one gateway Ganesha: {pidfiles}")
        if pidfiles:
            try:
                pid = int(pidfiles[0].read_text().strip() or 0)
            except (FileNotFoundError, ValueError):
                pid = 0
            if pid and pid != not_pid and pid_alive(pid):
                return pid
        if time.monotonic() > deadline:
            raise RuntimeError("no live gateway Ganesha")
        time.sleep(0.05)


async def kill_to_read(
    state: Path, via: Target, name: str, scratch: Path, kills: int
) -> list[float]:
    timings: list[float] = []
    dst = scratch / "probe-back.bin"
    pid = 0
    for _ in range(kills):
        pid = gateway_ganesha(state, not_pid=pid)
        os.kill(pid, signal.SIGKILL)
        killed = time.perf_counter()
        while (await via.read(name, dst, timeout=5))[0] != 0:
            if time.perf_counter() - killed > 60:
                raise RuntimeError("the gateway did not serve again within 60s")
            await asyncio.sleep(0.05)
        timings.append(time.perf_counter() - killed)
    dst.unlink(missing_ok=True)
    return timings


async def teardown(client: Client, made: Made) -> None:
    """Removes what the bench made; reports, but goes on past, any failure."""
    steps = [
        *((client.shares.DeleteShare, ss.DeleteShareRequest(name=n)) for n in made.shares),
        *(
            (client.networks.DeleteAttachment, sns.DeleteAttachmentRequest(name=n))
            for n in made.attachments
        ),
        *(
            (client.networks.DeleteShareNetwork, sns.DeleteShareNetworkRequest(name=n))
            for n in made.networks
        ),
    ]
    for method, request in steps:
        deadline = time.monotonic() + 60
        while True:
            try:
                await client.wait(await client.call(method, request))
                break
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    break
                failure: Exception = error
            except OperationFailed as error:
                if error.code == grpc.StatusCode.NOT_FOUND:
                    break
                failure = error
            except Exception as error:  # noqa: BLE001 - cleanup goes on
                failure = error
            if time.monotonic() > deadline:  # e.g. a share still being created
                print(f"cleanup: could not delete {request.name}: {failure}", file=sys.stderr)
                break
            await asyncio.sleep(1)


async def bench(mesh: LocalMesh, client: Client, netns: str, tmp: Path, args) -> None:  # type: ignore[no-untyped-def]
    made = Made()
    try:
        op = await client.call(
            client.networks.CreateShareNetwork,
            sns.CreateShareNetworkRequest(
                parent=PROJECT,
                share_network_id="bench-net",
                share_network=share_network_pb2.ShareNetwork(cidr=CIDR),
            ),
        )
        made.networks.append(f"{PROJECT}/shareNetworks/bench-net")
        network = await client.wait(op, share_network_pb2.ShareNetwork)
        assert network is not None
        op = await client.call(
            client.networks.CreateAttachment,
            sns.CreateAttachmentRequest(
                parent=network.name,
                attachment_id=netns,
                attachment=share_network_pb2.Attachment(netns=netns, address=CLIENT_ADDRESS),
            ),
        )
        made.attachments.append(f"{network.name}/attachments/{netns}")
        await client.wait(op, share_network_pb2.Attachment)

        gw_share = await create_share(client, made, "via-gateway", network.name)
        direct_share = await create_share(client, made, "direct")
        await grant(client, gw_share.name, CLIENT_ADDRESS)
        await grant(client, direct_share.name, "127.0.0.1")
        gateway = target(gw_share, netns)
        direct = target(direct_share, None)
        assert direct.host == "127.0.0.1", direct
        assert gateway.host.startswith("10.41.0."), gateway
        print(f"gateway export {gateway.host}:{gateway.pseudo} (from netns {netns})")
        print(f"direct export  {direct.host}:{direct.pseudo}")

        data = tmp / "data.bin"
        with data.open("wb") as out:
            for _ in range(args.size_mib):
                out.write(os.urandom(1 << 20))
        probe = tmp / "probe.bin"
        probe.write_bytes(os.urandom(64 << 10))
        # Both exports admit their client before timing starts.
        for via in (gateway, direct):
            await until_ok(via.ls, f"listing {via.host}:{via.pseudo}")
        code, out = await gateway.write(probe, "probe.bin", 30)
        if code != 0:
            raise RuntimeError(f"probe write failed ({code}): {out}")

        results = {}
        for label, via in (("direct", direct), ("gateway", gateway)):
            results[label] = await throughput(via, label, data, tmp, args.rounds, args.size_mib)
        size = args.size_mib
        print(f"\n{size} MiB copy, {args.rounds} rounds each (nfs-cp; write NFSv3, read NFSv4)")
        for label in ("direct", "gateway"):
            writes, reads = results[label]
            print(f"  {label:7} write  {rates(writes, size)}")
            print(f"  {label:7} read   {rates(reads, size)}")
        for i, what in enumerate(("write", "read")):
            gw_best = size / min(results["gateway"][i])
            dr_best = size / min(results["direct"][i])
            gw_med = size / statistics.median(results["gateway"][i])
            dr_med = size / statistics.median(results["direct"][i])
            print(
                f"  gateway/direct {what:5}  best {gw_best / dr_best:.2f}  "
                f"median {gw_med / dr_med:.2f}  (aim >= 0.8)"
            )

        timings = await kill_to_read(mesh.state_dir, gateway, "probe.bin", tmp, args.kills)
        each = "  ".join(f"{t:.2f}s" for t in timings)
        print(f"\ngateway Ganesha kill -9 to first read from {netns}: {each}")
        print(f"  median {statistics.median(timings):.2f}s  (aim <= 3 s)")
    except BaseException:
        show_logs(mesh.state_dir)
        raise
    finally:
        await teardown(client, list_reversed(made))


def show_logs(state: Path, lines: int = 15) -> None:
    """The end of every service log, before the temp dir (and they) go."""
    for log in sorted([*(state / "logs").glob("*.log"), *state.glob("gateway/*/*.log")]):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        print(f"--- {log.relative_to(state)}", *tail, sep="\n  ", file=sys.stderr)


def list_reversed(made: Made) -> Made:
    return Made(made.shares[::-1], made.attachments[::-1], made.networks[::-1])


def leftovers(netns: str, tmp: str) -> list[str]:
    found = []
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {line}" for line in namespaces.splitlines() if netns in line]
    ps = subprocess.run(["pgrep", "-af", tmp], capture_output=True, text=True).stdout
    found += [f"process {line}" for line in ps.splitlines() if "pgrep" not in line]
    mounts = Path("/proc/mounts").read_text().splitlines()
    found += [f"mount {line}" for line in mounts if f" {tmp}" in line]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    found += [f"loop {line}" for line in loops.splitlines() if tmp in line]
    return found


async def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    ensure_rpcbind()
    netns = f"gwbench-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="sharemesh-bench-gw-") as tmp:
        try:
            subprocess.run(["ip", "netns", "add", netns], check=True)
            subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
            config = Path(tmp) / "mesh.toml"
            config.write_text(CONFIG)
            async with LocalMesh(
                Path(tmp) / "state", config, api_port=0, lease_ttl_seconds=3
            ) as mesh:
                async with Client(mesh.api_address, mesh.admin_token) as client:
                    await bench(mesh, client, netns, Path(tmp), args)
        finally:
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
            left = leftovers(netns, tmp)
            if left:
                print("left behind:\n  " + "\n  ".join(left), file=sys.stderr)
    print(f"\nclean up: {'NOT clean' if left else 'nothing left behind'}")
    print(f"total run time {time.perf_counter() - started:.0f}s")
    return 1 if left else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kills", type=int, default=5)
    sys.exit(asyncio.run(main(parser.parse_args())))
