"""`sharemesh up` as people run it: every service healthy, reflection on the API,
grpcurl works, and SIGTERM leaves no process behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from sharemesh.runtime.health import check

from support import (
    guest_namespaces,
    loops_under,
    mounts_under,
    pid_alive,
    processes_mentioning,
    run,
)

pytestmark = pytest.mark.e2e

VENV_BIN = Path(sys.executable).parent


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found  # it exited meanwhile
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
        for child in map(int, children):
            found |= {child} | _descendants(child)
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""  # it exited meanwhile


async def _wait_for_line(process: asyncio.subprocess.Process, prefix: str, timeout: float) -> str:
    assert process.stdout is not None
    seen = []
    async with asyncio.timeout(timeout):
        while line := (await process.stdout.readline()).decode():
            if line.startswith(prefix):
                return line.strip()
            seen.append(line)
    raise AssertionError(f"no line {prefix!r}; output:\n{''.join(seen)}")


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "sharemesh"),
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


async def _cli_round_trip(api: str, token: str) -> None:
    """The CLI as the contract names it: share create, list --json, show, delete."""
    env = {"SHAREMESH_ENDPOINT": api, "SHAREMESH_TOKEN": token}
    code, out = await _cli(env, "share", "create", "cli-demo", "--size", "1", "--project", "demo")
    assert code == 0 and "ACTIVE" in out, out
    code, out = await _cli(env, "share", "list", "--project", "demo", "--json")
    assert code == 0, out
    (listed,) = json.loads(out)
    assert listed["name"] == "projects/demo/shares/cli-demo" and listed["state"] == "ACTIVE"
    code, out = await _cli(env, "share", "show", "projects/demo/shares/cli-demo")
    assert code == 0 and "export_locations" in out and "127.0.0.1:/" in out, out
    code, out = await _cli(env, "share", "create", "Bad_Id", "--size", "0", "--project", "demo")
    assert code == 2 and "at least 1 GiB" in out, out  # refused before any call
    code, out = await _cli(env, "share", "create", "Bad_Id", "--size", "1", "--project", "demo")
    assert code == 1 and out.count("INVALID_ARGUMENT") == 1 and "share_id" in out, out
    code, out = await _cli(
        {**env, "SHAREMESH_TOKEN": "wrong"}, "share", "list", "--project", "demo"
    )
    assert code == 3 and "UNAUTHENTICATED" in out and "SHAREMESH_TOKEN" in out, out
    with guest_namespaces("cli") as guests:
        code, out = await _cli(
            env, "network", "create", "net1", "--cidr", "10.33.0.0/24", "--project", "demo"
        )
        assert code == 0 and "ACTIVE" in out, out
        code, out = await _cli(
            env,
            "network",
            "attach",
            "net1",
            guests["cli"],
            "--address",
            "10.33.0.7",
            "--project",
            "demo",
        )
        assert code == 0 and "ACTIVE" in out, out
        address = subprocess.run(
            ["ip", "-n", guests["cli"], "-o", "addr"], capture_output=True, text=True
        ).stdout
        assert "10.33.0.7/24" in address, address
        code, out = await _cli(env, "network", "detach", "net1", guests["cli"], "--project", "demo")
        assert code == 0, out
        address = subprocess.run(
            ["ip", "-n", guests["cli"], "-o", "addr"], capture_output=True, text=True
        ).stdout
        assert "10.33.0.7" not in address, address
        code, out = await _cli(env, "network", "delete", "net1", "--project", "demo")
        assert code == 0, out
    # The admin marks the share failed, then has it made true again.
    for state, shown in (("error", "ERROR"), ("active", "ACTIVE")):
        code, out = await _cli(
            env, "share", "reset-state", "cli-demo", "--state", state, "--project", "demo"
        )
        assert code == 0 and shown in out, out
    code, out = await _cli(env, "share", "delete", "cli-demo", "--project", "demo")
    assert code == 0, out
    code, out = await _cli(env, "share", "list", "--project", "demo", "--json")
    assert json.loads(out) == []


async def _sharemesh_up(
    state: Path, stderr: int = asyncio.subprocess.DEVNULL
) -> asyncio.subprocess.Process:
    """`sharemesh up` as people run it, on a free API port and a short lease."""
    return await asyncio.create_subprocess_exec(
        str(VENV_BIN / "sharemesh"),
        "up",
        "--state-dir",
        str(state),
        "--api-port",
        "0",
        "--lease-ttl",
        "3",
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
    )


async def test_up_serves_health_reflection_and_stops_clean(tmp_path: Path) -> None:
    state = tmp_path / "state"
    process = await _sharemesh_up(state)
    pids: set[int] = set()
    try:
        line = await _wait_for_line(process, "sharemesh api listening on ", 90)
        api = line.rsplit(" ", 1)[1]
        mesh = json.loads((state / "mesh.json").read_text())
        services = {
            "api": mesh["api"]["listen"],
            "scheduler": mesh["scheduler"]["listen"],
            "gateway": mesh["gateway"]["listen"],
            **{b["name"]: b["listen"] for b in mesh["backends"]},
        }
        assert services["api"] == api
        assert await check(api) == health_pb2.HealthCheckResponse.SERVING
        # Inside, mutual TLS: a plaintext health check is refused, and each service
        # answers it on its probe port instead.
        probes = json.loads((state / "probes.json").read_text())
        assert set(probes) == {"api", "scheduler", "gateway", "driver-host-local"}
        for name, address in probes.items():
            assert await check(address) == health_pb2.HealthCheckResponse.SERVING, name
        for name in ("scheduler", "gateway", "local"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await check(services[name])
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, name

        code, listing = await run(str(VENV_BIN / "grpcurl"), "-plaintext", api, "list")
        assert code == 0, listing
        for service in (
            "sharemesh.v1.ShareService",
            "google.longrunning.Operations",
            "grpc.health.v1.Health",
        ):
            assert service in listing.split()

        await _cli_round_trip(api, (state / "admin.token").read_text().strip())

        # A second `sharemesh up` on the same state dir: one plain line, no traceback.
        second = await _sharemesh_up(state, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(second.communicate(), 30)
        assert second.returncode == 1 and not out, out
        (said,) = err.decode().splitlines()
        assert "already in use by another `sharemesh up`" in said, said

        pids = _descendants(process.pid)
        ganesha_pid = int((state / "pools/local/ganesha/ganesha/ganesha.pid").read_text())
        pids.add(ganesha_pid)
        assert len(pids) >= 6  # etcd, four services, Ganesha (and its bus)
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 60)
    assert code == 0
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert not [p for p in pids if pid_alive(p)], "processes left after SIGTERM"
    assert not mounts_under(state) and not loops_under(state)


async def test_a_stop_during_a_service_restart_leaves_nothing(tmp_path: Path) -> None:
    """The launcher is stopped just as it restarts a crashed driver-host: the new process,
    still importing, must stop in order and take the Ganesha it adopts with it."""
    state = tmp_path / "state"
    process = await _sharemesh_up(state)
    try:
        await _wait_for_line(process, "sharemesh api listening on ", 90)
        (driver_host,) = [
            pid for pid in _descendants(process.pid) if b"sharemesh.driver_host" in _cmdline(pid)
        ]
        os.kill(driver_host, signal.SIGKILL)
        await asyncio.sleep(0.7)  # restarted after 0.5 s, and still starting
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 60)
    assert code == 0
    deadline = time.monotonic() + 10
    while processes_mentioning(str(state)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert not processes_mentioning(str(state)), "a process outlived the launcher"


async def test_up_with_hosts_runs_each_host_in_a_namespace_of_its_own(tmp_path: Path) -> None:
    """`sharemesh up --hosts 2`: each host's processes in its own network namespace, on
    its own address; the api answers over TLS from the mesh CA; SIGTERM leaves nothing."""
    state = tmp_path / "state"
    process = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "sharemesh"), "up", "--state-dir", str(state), "--hosts", "2",
        "--lease-ttl", "3", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    fabric: dict[str, str] = {}
    try:
        line = await _wait_for_line(process, "sharemesh api listening on ", 120)
        apis = line.removeprefix("sharemesh api listening on ").removesuffix(" (TLS)")
        fabric = json.loads((state / "fabric.json").read_text())
        root = (state / "tls" / "ca.crt").read_bytes()
        for api in apis.split(", "):
            assert (
                await check(api, root_certificates=root) == health_pb2.HealthCheckResponse.SERVING
            )
        for k in (1, 2):
            netns = f"sm-host-{fabric['tag']}-{k}"
            code, pids = await run("ip", "netns", "pids", netns)
            assert code == 0 and len(pids.split()) >= 3, (netns, pids)  # etcd, gateway, api…
            mesh = json.loads((state / "hosts" / f"host-{k}" / "mesh.json").read_text())
            assert mesh["gateway"]["host"] == f"host-{k}"
            assert mesh["etcd"]["endpoint"].count("https://") == 2
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 90)
    assert code == 0
    assert fabric, "the mesh did not come up"
    code, left = await run("ip", "netns", "list")
    assert f"sm-host-{fabric['tag']}" not in left
    assert not processes_mentioning(str(state))
    assert not mounts_under(state) and not loops_under(state)
