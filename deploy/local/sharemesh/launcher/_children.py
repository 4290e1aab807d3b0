"""Child processes of the local launcher: started with a log file, restarted when they
die while the mesh runs, stopped in order when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from sharemesh.runtime.namespaces import enter_netns

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _prepare_child(netns: str | None = None) -> None:
    enter_netns(netns)
    # A launcher killed with SIGKILL cannot stop its children; the kernel does it for us.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    # A stop that comes while the child is still starting must not kill it before it
    # can release what it holds (an adopted Ganesha, say): the signals stay pending
    # until the service has its handlers (`sharemesh.runtime.server.run`).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})


async def exited(process: subprocess.Popen[bytes]) -> int:
    """The process's exit code, awaited on its pidfd: no thread per waiting child."""
    if process.poll() is not None:
        return process.returncode
    fd = os.pidfd_open(process.pid)
    try:
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, wake)
        try:
            if process.poll() is None:
                await readable
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)
    return process.wait()


class Child:
    """One supervised service process."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        release_argv: Sequence[str] | None = None,
        netns: str | None = None,
    ) -> None:
        self.name = name
        self.netns = netns
        """The network namespace it runs in (a simulated host's), or the launcher's."""
        # It holds host resources that outlive it (Ganesha, mounts) and lets go of them
        # when stopped in order; if it was down, or did not stop in order, this command
        # releases them instead. It needs no etcd, which may be dead by then.
        self._release_argv = list(release_argv) if release_argv else None
        self._argv = list(argv)
        self._log_path = log_path
        self._env = {**os.environ, **(env or {})}
        self._process: subprocess.Popen[bytes] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self.exits: list[int] = []
        """The exit codes of the incarnations that ended on their own, oldest first
        (3: lost its lease; anything else but a clean stop is a crash)."""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        self._stopping = False
        await self._spawn()
        self._watcher = asyncio.create_task(self._watch(), name=f"watch-{self.name}")

    async def _spawn(self) -> None:
        self._process = self._popen(self._argv)

    def _popen(self, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        # `subprocess`, not the event loop's spawn: uvloop's (libuv's) clears the signal
        # mask that `_prepare_child` sets in the child.
        with open(self._log_path, "ab") as out:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=True,
                preexec_fn=functools.partial(_prepare_child, self.netns),
            )

    async def _watch(self) -> None:
        backoff = 0.5
        while True:
            assert self._process is not None
            started = time.monotonic()
            code = await exited(self._process)
            if self._stopping:
                return
            self.exits.append(code)
            if time.monotonic() - started > 5:
                backoff = 0.5  # it ran a while, so it is not crash-looping: restart soon
            log.warning(
                "%s exited with %s; restarting in %.1fs (log: %s)",
                self.name,
                code,
                backoff,
                self._log_path,
            )
            await asyncio.sleep(backoff)
            if self._stopping:
                return
            backoff = min(backoff * 2, 10.0)
            await self._spawn()

    async def _stop_watching(self) -> None:
        """No restart from here on."""
        self._stopping = True
        if self._watcher:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def kill(self) -> None:
        """SIGKILL, not restarted, nothing released: a host that dies (tests)."""
        await self._stop_watching()
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            await exited(process)

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not finish in time; idempotent."""
        await self._stop_watching()
        process, self._process = self._process, None  # a second stop has nothing to do
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # pending until it can stop in order
            try:
                await asyncio.wait_for(exited(process), timeout)
            except asyncio.TimeoutError:
                log.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
                process.kill()
                await exited(process)
        if process.returncode != 0 and self._release_argv:
            log.info("%s did not stop in order; releasing what it held", self.name)
            await self.release(timeout)

    async def release(self, timeout: float = 15.0) -> None:
        """Lets go of what the child holds beyond its life (Ganesha servers, mounts),
        from the host alone; idempotent. For one that did not stop in order, or whose
        servers outlive its orderly stops."""
        if not self._release_argv:
            return
        process = self._popen(self._release_argv)
        try:
            code = await asyncio.wait_for(exited(process), timeout)
        except asyncio.TimeoutError:
            process.kill()
            code = await exited(process)
        if code != 0:
            log.warning("releasing %s exited with %s (log: %s)", self.name, code, self._log_path)
