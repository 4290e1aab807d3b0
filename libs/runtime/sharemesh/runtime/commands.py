"""Running host tools (mkfs.xfs, xfs_growfs, fsfreeze…) without blocking the loop.

`subprocess.run` in a worker thread: CPython spawns with vfork/posix_spawn, which costs
the service almost nothing, where the event loop's own spawn forks the whole service
process (measured: a third of the driver-host's CPU at 14 creates/s)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from .errors import Internal

_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="command")


class CommandError(Internal):
    """A tool that failed; the message carries its stderr."""

    def __init__(self, argv: tuple[str, ...], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(argv)} failed ({returncode}): {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


async def run(
    *argv: str, timeout: float = 120.0, env: Mapping[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Runs a command to completion; with `check`, a non-zero exit is a CommandError."""

    def call() -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                env=dict(env) if env is not None else None,
            )
        except subprocess.TimeoutExpired:
            raise CommandError(argv, -1, f"timed out after {timeout}s") from None

    done = await asyncio.get_running_loop().run_in_executor(_POOL, call)
    if check and done.returncode != 0:
        raise CommandError(argv, done.returncode, done.stderr)
    return done
