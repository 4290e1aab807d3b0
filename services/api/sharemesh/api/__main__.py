"""`python -m sharemesh.api --config FILE`: the public API process (stateless; run N)."""

from __future__ import annotations

import argparse
import asyncio

from sharemesh.runtime import config, process, server

from ._app import build


def main() -> None:
    parser = argparse.ArgumentParser(prog="sharemesh-api", description=__doc__)
    parser.add_argument("--config", help="mesh config (TOML, or the launcher's JSON)")
    parser.add_argument("--listen", help="override [api] listen")
    args = parser.parse_args()
    cfg = config.load(args.config)

    async def run(stop: asyncio.Event) -> None:
        await process.serve("api", cfg, args.listen or cfg.api.listen, build, stop)

    server.run(run)


if __name__ == "__main__":
    main()
