"""`sharemesh up`: run the local mesh in the foreground until SIGINT or SIGTERM; with
`--hosts N`, as N hosts, each a network namespace with an etcd member of its own.

People read plain lines on the terminal; the launcher's JSON log goes to
`DIR/logs/launcher.log`, beside each service's own log. One `sharemesh up` owns a
state dir at a time: a second one says so in one line and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import sys
from pathlib import Path
from typing import IO

from sharemesh.launcher import DEFAULT_API_PORT, HostsMesh, LocalMesh
from sharemesh.runtime import logs, server

log = logging.getLogger("sharemesh.up")


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    up = commands.add_parser(
        "up", help="run etcd and every service on this machine", description=__doc__
    )
    up.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        help="keeps etcd data, pool images, logs and the admin key",
    )
    up.add_argument("--config", type=Path, help="mesh config (TOML)")
    up.add_argument(
        "--api-port",
        type=int,
        default=DEFAULT_API_PORT,
        help=f"public API port on loopback (default {DEFAULT_API_PORT}; 0 picks one)",
    )
    up.add_argument("--lease-ttl", type=int, help="lease TTL in seconds (tests use 2-3)")
    up.add_argument(
        "--schedulers",
        type=int,
        default=1,
        help="scheduler processes (one leads, the others stand by)",
    )
    up.add_argument(
        "--hosts",
        type=int,
        default=0,
        help="run the mesh as N hosts on this machine, each a network namespace with its "
        "own address, etcd member and gateway (the api and schedulers on the first two)",
    )
    up.set_defaults(run=run)


class _Plain(logging.Formatter):
    """Warnings and errors for people: `sharemesh up: warning: …`, no JSON."""

    def format(self, record: logging.LogRecord) -> str:
        return f"sharemesh up: {record.levelname.lower()}: {record.getMessage()}"


def _configure_logs(log_file: Path) -> None:
    logs.configure("launcher")  # JSON formatting, the services' own format
    root = logging.getLogger()
    (json_handler,) = root.handlers
    to_file = logging.FileHandler(log_file)
    to_file.setFormatter(json_handler.formatter)
    to_terminal = logging.StreamHandler(sys.stderr)
    to_terminal.setFormatter(_Plain())
    to_terminal.setLevel(logging.WARNING)
    root.handlers[:] = [to_file, to_terminal]


def _lock(state_dir: Path) -> IO[str] | None:
    """Holds `DIR/up.lock` while this process runs the mesh; None if another does."""
    handle = (state_dir / "up.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip()
        handle.close()
        print(
            f"sharemesh up: {state_dir} is already in use by another `sharemesh up`"
            + (f" (pid {owner})" if owner else "")
            + "; stop it first, or pick another --state-dir",
            file=sys.stderr,
        )
        return None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _mesh(state_dir: Path, args: argparse.Namespace) -> LocalMesh | HostsMesh:
    if args.hosts:
        return HostsMesh(state_dir, args.hosts, args.config, args.api_port, args.lease_ttl)
    return LocalMesh(state_dir, args.config, args.api_port, args.lease_ttl, args.schedulers)


def run(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir.resolve()
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    lock = _lock(state_dir)
    if lock is None:
        return 1
    log_file = state_dir / "logs" / "launcher.log"
    _configure_logs(log_file)
    failed: list[BaseException] = []

    async def main(stop: asyncio.Event) -> None:
        try:
            async with _mesh(state_dir, args) as mesh:
                if isinstance(mesh, HostsMesh):
                    for host in mesh.hosts:
                        print(f"{host.name} at {host.address}", flush=True)
                    addresses = ", ".join(mesh.api_addresses)
                    print(f"sharemesh api listening on {addresses} (TLS)", flush=True)
                    print(f"the api's CA in {mesh.ca_file}", flush=True)
                else:
                    print(f"sharemesh api listening on {mesh.api_address}", flush=True)
                print(f"admin key in {state_dir / 'admin.token'}", flush=True)
                print(f"logs in {state_dir / 'logs'}; Ctrl-C stops everything", flush=True)
                await stop.wait()
                print("stopping", flush=True)
        except Exception as error:  # one line for people; the traceback in the log
            log.exception("sharemesh up failed")
            failed.append(error)

    with lock:
        server.run(main)
    if failed:
        print(
            f"sharemesh up: cannot run the mesh: {failed[0]} (details in {log_file})",
            file=sys.stderr,
        )
        return 1
    return 0
