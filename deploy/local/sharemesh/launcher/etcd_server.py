"""EtcdServer: Debian's etcd 3.4 as a child process (local launcher and tests)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sharemesh.runtime import tls
from sharemesh.runtime.errors import Unavailable
from sharemesh.runtime.namespaces import enter_netns
from sharemesh.runtime.ports import free_port

from ._children import exited

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _prepare(netns: str | None) -> None:  # runs in the child between fork and exec
    enter_netns(netns)
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True)
class EtcdTls:
    """etcd's certificates: clients must present one from the CA, and so must peers."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    peer_cert_file: Path
    peer_key_file: Path
    client: tls.Identity
    """What the launcher's own process presents (its waits, and tests' direct reads)."""

    def flags(self) -> list[str]:
        return [
            "--client-cert-auth",
            f"--trusted-ca-file={self.ca_file}",
            f"--cert-file={self.cert_file}",
            f"--key-file={self.key_file}",
            "--peer-client-cert-auth",
            f"--peer-trusted-ca-file={self.ca_file}",
            f"--peer-cert-file={self.peer_cert_file}",
            f"--peer-key-file={self.peer_key_file}",
        ]


@dataclass(frozen=True)
class Membership:
    """A member of a cluster of several: where it runs, and who its peers are."""

    address: str
    """The address it listens on and advertises (its host's)."""
    netns: str
    """The network namespace of its host."""
    initial_cluster: str
    """`name=https://address:port,…` of every member."""
    token: str
    """The cluster's token, unique per mesh, so members of two meshes never join."""


class EtcdServer:
    """One etcd member: a single-member cluster on 127.0.0.1, or with `member` one of a
    cluster, on its host's address and in its namespace; with `tls`, over TLS with
    client certificates (and peers').

    `async with EtcdServer(data_dir) as etcd:` starts it (free ports unless given),
    waits until a real KV read succeeds, and stops it on exit. The log goes to
    `{data_dir.parent}/{data_dir.name}.log`. The child is killed if this process dies.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
        name: str = "sharemesh",
        binary: str | None = None,
        compaction_retention: str = "1h",
        extra_args: tuple[str, ...] = (),
        tls: EtcdTls | None = None,
        member: Membership | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.member = member
        self.address = member.address if member else "127.0.0.1"
        self.tls = tls
        self._scheme = "https" if tls else "http"
        # TLS clients must present a certificate; metrics (and /health) stay plaintext
        # on a loopback port of their own, for scrapers that have none.
        self.metrics_port: int | None = None
        self.name = name
        self.binary = binary or shutil.which("etcd") or "/usr/bin/etcd"
        self._fixed_ports = client_port is not None or peer_port is not None
        self.client_port = client_port
        self.peer_port = peer_port
        self.compaction_retention = compaction_retention
        self.extra_args = tuple(extra_args)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        if self.client_port is None:
            raise RuntimeError("etcd not started")
        return f"{self._scheme}://{self.address}:{self.client_port}"

    @property
    def metrics_url(self) -> str:
        """Base URL of etcd's `/metrics` and `/health`, plaintext even with TLS."""
        if self.metrics_port is None:
            return self.endpoint
        return f"http://{self.address}:{self.metrics_port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        client = f"{self._scheme}://{self.address}:{self.client_port}"
        peer = f"{self._scheme}://{self.address}:{self.peer_port}"
        cluster = self.member.initial_cluster if self.member else f"{self.name}={peer}"
        return [
            self.binary,
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            cluster,
            *(["--initial-cluster-token", self.member.token] if self.member else []),
            "--auto-compaction-mode=periodic",
            f"--auto-compaction-retention={self.compaction_retention}",
            "--logger=zap",
            "--log-outputs=stderr",
            *(self.tls.flags() if self.tls else []),
            *([f"--listen-metrics-urls={self.metrics_url}"] if self.metrics_port else []),
            *self.extra_args,
        ]

    def _log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def start(self, timeout: float = 30.0, *, wait: bool = True) -> EtcdServer:
        """Start etcd and wait until healthy; retries on fresh ports if a port was taken.
        A member of a cluster answers only once a quorum has started: start every
        member with `wait=False`, then `await wait_healthy()` on each."""
        if self.running:
            return self
        attempts = 1 if self._fixed_ports else 3
        for attempt in range(attempts):
            if not self._fixed_ports:
                self.client_port, self.peer_port = free_port(), free_port()
                while self.peer_port == self.client_port:
                    self.peer_port = free_port()
            if self.tls:
                tls.register_etcd_client(self.endpoint, self.tls.client)
                if self.metrics_port is None or not self._fixed_ports:
                    self.metrics_port = free_port()
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as log:
                self._process = subprocess.Popen(
                    self._command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    preexec_fn=functools.partial(
                        _prepare, self.member.netns if self.member else None
                    ),
                    close_fds=True,
                )
            if not wait:
                return self
            try:
                await self._wait_healthy(timeout)
                return self
            except _Exited:
                tail = self._log_tail()
                self._process = None
                if attempt + 1 < attempts and "address already in use" in tail:
                    continue
                raise Unavailable(
                    f"etcd exited during start; log {self.log_path}:\n{tail}"
                ) from None
            except BaseException:
                await self.kill()
                raise
        raise AssertionError("unreachable")

    async def wait_healthy(self, timeout: float = 60.0) -> None:
        try:
            await self._wait_healthy(timeout)
        except _Exited:
            raise Unavailable(
                f"etcd exited during start; log {self.log_path}:\n{self._log_tail()}"
            ) from None

    async def _wait_healthy(self, timeout: float) -> None:
        from sharemesh.runtime.coordination import connect  # the one etcd client stack

        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise _Exited()
            try:
                identity = self.tls.client if self.tls else None
                async with connect(self.endpoint, timeout=2.0, identity=identity) as client:
                    await client.get(b"/__health")
                return
            except Exception as error:  # noqa: BLE001 - retried until the deadline
                last = error
                await asyncio.sleep(0.1)
        raise Unavailable(
            f"etcd at {self.endpoint} not healthy after {timeout}s: {last}; "
            f"log {self.log_path}:\n{self._log_tail()}"
        )

    async def _reap(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        assert self._process is not None
        while self._process.poll() is None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; always reaps. Idempotent."""
        if self._process is None:
            return
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGTERM)
            if not await self._reap(timeout):
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()
                await self._reap(timeout)
        self._process.wait()
        self._process = None

    async def supervise(self) -> None:
        """Restarts etcd whenever it dies, on the same data dir and ports, backing off
        (0.5 s doubling to 10 s) while it keeps failing; runs until cancelled. The
        services reconnect on their own once it is back."""
        backoff = 0.5
        while True:
            process = self._process
            started = time.monotonic()
            if process is not None:
                await exited(process)
                if time.monotonic() - started > 5:
                    backoff = 0.5  # it ran a while, so it is not crash-looping
                log.warning(
                    "etcd exited with %s; restarting in %.1fs (log: %s)",
                    process.returncode,
                    backoff,
                    self.log_path,
                )
            self._process = None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
            try:
                await self.start()
                log.info("etcd restarted on %s", self.endpoint)
            except Unavailable as error:
                log.warning("etcd did not come back: %s", error)

    async def kill(self) -> None:
        """SIGKILL and reap at once (tests: simulate a crash)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
        self._process.wait()
        self._process = None

    async def __aenter__(self) -> EtcdServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _Exited(Exception):
    pass
