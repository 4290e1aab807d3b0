"""`sharemesh up`: run the local mesh in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from sharemesh.launcher import DEFAULT_API_PORT, LocalMesh
from sharemesh.runtime import logs, server


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    up = commands.add_parser("up", help="run etcd and every service on this machine")
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
    up.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    logs.configure("launcher")
    log = logging.getLogger("sharemesh.up")

    async def main(stop: asyncio.Event) -> None:
        async with LocalMesh(
            args.state_dir, args.config, args.api_port, args.lease_ttl, args.schedulers
        ) as mesh:
            print(f"sharemesh api listening on {mesh.api_address}", flush=True)
            log.info(
                "admin key in %s; logs in %s",
                args.state_dir / "admin.token",
                args.state_dir / "logs",
            )
            await stop.wait()
            log.info("stopping")

    server.run(main)
    return 0
