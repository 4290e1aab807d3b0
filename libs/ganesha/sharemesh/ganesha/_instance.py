"""One Ganesha server and its private D-Bus daemon, tracked by pidfiles.

Both run in their own session, so they outlive the service that started them (a crashed
service leaves its shares served); the next incarnation adopts them by pidfile.

`ganesha.conf` includes only export files Ganesha has accepted: a new version of an
export is staged under another name, handed to Ganesha over D-Bus, and renamed into
place only once Ganesha serves it. So one refused export never stops Ganesha's next start,
and a start that fails anyway falls back to adding the files one by one. Ganesha reads
`ganesha.conf` only when it starts, so it is written then, from the export files: a
change of one export writes that export's file alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharemesh.runtime import metrics, namespaces
from sharemesh.runtime.errors import (
    Internal,
    InvalidArgument,
    NfsServerDown,
    NfsServerRestarting,
    Unavailable,
)

from ._dbus import DBusError, ExportMgr
from ._export import Export, _check_text

log = logging.getLogger("sharemesh.ganesha")

_GANESHA = "ganesha.nfsd"
_DBUS = "dbus-daemon"
# While both run, supervision waits on their pidfds; this slow look is only a net.
_IDLE_CHECK = 30.0

# Children this process started: polled so an exited child is reaped, not left a zombie
# (on these machines PID 1 does not reap orphans either).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

_PSEUDO = re.compile(r'\bPseudo\s*=\s*"([^"\n]*)"', re.IGNORECASE)


@dataclass(frozen=True)
class RefusedExport:
    """An export Ganesha would not take. Its file is not included; the last one that
    Ganesha refused at a start is kept beside the others as `<id>.refused`."""

    export_id: int
    pseudo: str
    """Its pseudo path; empty when a file Ganesha refused did not say."""


class ExportRefused(Internal):
    """Ganesha refused an export, or took it with other clients than asked. Not
    transient: the same export is refused again. The detail is in the log."""

    def __init__(self, export: Export) -> None:
        super().__init__(
            f"the NFS server refused the export of {export.pseudo}", reason="EXPORT_REFUSED"
        )
        self.export_id = export.export_id
        self.pseudo = export.pseudo


def _running(pid: int | None, comm: str, needle: str) -> bool:
    """Whether `pid` is alive, runs `comm`, and has `needle` on its command line."""
    if not pid:
        return False
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    state = stat[stat.rindex(")") + 2 :].split(" ", 1)[0]
    if state in ("Z", "X") or name != comm[:15]:
        return False
    return needle.encode() in cmdline


def _running_with(comm: str, needle: str) -> list[int]:
    """Every live `comm` process with `needle` on its command line (one a crash left
    without a pidfile, say)."""
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [pid for pid in pids if _running(pid, comm, needle)]


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _write_atomic(path: Path, text: str, durable: bool = True) -> None:
    """Written whole or not at all, readable by root alone (an export may hold a
    backend's key, e.g. FSAL_CEPH's cephx secret); on disk before it replaces the old
    one unless not `durable`."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text)
        f.flush()
        if durable:
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _prepare(hostname: str | None, netns: str | None) -> None:
    """Between fork and exec: Ganesha's network namespace, entered without a private
    copy of the mount table (a copy held the shares it had seen mounted, so their
    filesystems outlived their unmounts), and a hostname of its own: FSAL_CEPH names
    its cluster sessions `ganesha-{hostname}-{export id}` and resets an older session
    of the same name, so two Ganeshas of one host (a backend's and a gateway's) or of
    hosts that share a hostname would take each other's sessions away."""
    namespaces.enter_netns(netns)
    if hostname:
        namespaces.own_hostname(hostname)


def _spawn(
    argv: list[str],
    env: dict[str, str] | None = None,
    hostname: str | None = None,
    netns: str | None = None,
) -> subprocess.Popen[bytes]:
    # Not asyncio's subprocess: its transport kills a still-running child when garbage
    # collected or when the loop closes, and these must outlive both.
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
        preexec_fn=functools.partial(_prepare, hostname, netns) if hostname or netns else None,
    )
    _CHILDREN[proc.pid] = proc
    return proc


class GaneshaInstance:
    """A Ganesha with its own ports, state directory, pidfile, log and D-Bus daemon."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        nfs_port: int,
        mount_port: int,
        *,
        netns: str | None = None,
        grace_seconds: int = 0,
        bind_address: str | None = None,
        stop_timeout: float = 10.0,
        start_timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`env`: more of Ganesha's environment (e.g. `CEPH_CONF` for FSAL_CEPH)."""
        self.state_dir = Path(state_dir).absolute()
        self._env = dict(env or {})
        _check_text("state_dir", str(self.state_dir))
        if grace_seconds < 0:
            raise InvalidArgument("grace_seconds", "must be >= 0")
        self.nfs_port = nfs_port
        self.mount_port = mount_port
        self.netns = netns
        self.grace_seconds = grace_seconds
        self.bind_address = bind_address
        self.stop_timeout = stop_timeout
        self.start_timeout = start_timeout
        self.exports_dir = self.state_dir / "exports.d"
        self.config_file = self.state_dir / "ganesha.conf"
        self.pid_file = self.state_dir / "ganesha.pid"
        self.log_file = self.state_dir / "ganesha.log"
        self.bus_config = self.state_dir / "bus.conf"
        self.bus_socket = _bus_socket_path(self.state_dir)
        self.bus_pid_file = self.state_dir / "bus.pid"
        self.bus_address = f"unix:path={self.bus_socket}"
        self._mgr = ExportMgr(self.bus_address)
        self._lock = asyncio.Lock()
        # Per export id: the latest version asked for (re-applied after a restart), and
        # the latest one Ganesha accepted.
        self._known: dict[int, Export] = {}
        self._accepted: dict[int, Export] = {}
        self._loaded_from_files: set[int] = set()
        self._stopped = True
        metrics.observe_ganesha(self)

    # ---- lifecycle -------------------------------------------------------------------

    def _ganesha_pid(self) -> int | None:
        pid = _read_pid(self.pid_file)
        return pid if _running(pid, _GANESHA, str(self.config_file)) else None

    def _bus_pid(self) -> int | None:
        pid = _read_pid(self.bus_pid_file)
        return pid if _running(pid, _DBUS, str(self.bus_config)) else None

    def generation(self) -> str:
        """Which incarnation of Ganesha serves now (pid and start time): a proxy made
        against one incarnation stays broken after the next starts."""
        pid = self._ganesha_pid()
        if pid is None:
            return ""
        try:
            started = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return ""
        return f"{pid}:{started}"

    def export_count(self) -> int:
        """Exports Ganesha has accepted (0 once stopped)."""
        return 0 if self._stopped else len(self._accepted)

    def is_alive(self) -> bool:
        """Ganesha and its bus both run (without the bus it cannot be managed)."""
        return self._ganesha_pid() is not None and self._bus_pid() is not None

    def adopt(self) -> bool:
        """Take over a Ganesha left running by an earlier incarnation, if there is one."""
        if not self.is_alive():
            return False
        self._stopped = False
        log.info("adopted ganesha pid %s (%s)", self._ganesha_pid(), self.state_dir)
        return True

    async def start(self) -> list[RefusedExport]:
        """Adopt the running Ganesha, or start one serving every export file on disk.
        Returns the exports it refused (their files are set aside); the others serve."""
        async with self._lock:
            refused = await self._start_locked()
            # What it serves now is what its files say: the first apply of each is a
            # lookup (a restart with a thousand shares must not reload a thousand).
            with self._reaching("ShowExports"):
                self._loaded_from_files = await self._mgr.export_ids()
            return refused

    async def _start_locked(self) -> list[RefusedExport]:
        if self.adopt():
            return []
        # A Ganesha whose bus died cannot be managed any more: replace both.
        await self._terminate(self._ganesha_pid(), "ganesha")
        for d in (self.state_dir, self.exports_dir, self.state_dir / "recovery"):
            d.mkdir(parents=True, exist_ok=True)
        for staged in self.exports_dir.glob("*.staged"):  # a crash during an apply
            staged.unlink(missing_ok=True)
        if self._bus_pid() is None:
            await self._start_bus()
        if not await self._launch(include_exports=True):
            if not self._export_files() or self._host_cause():
                raise self._failed_to_start("it exited at start")
            # An export file it cannot parse (a bug, an old version, a damaged disk) must
            # not keep every other export down.
            log.error(
                "ganesha %s exited at start with its export files; starting it with none "
                "and adding them one by one. Log tail:\n%s",
                self.state_dir,
                self._log_tail(),
            )
            if not await self._launch(include_exports=False):
                raise self._failed_to_start("it exited at start even without exports")
        self._stopped = False
        refused = await self._load_missing()
        self._write_main_config()  # what was set aside is no longer included
        return refused

    async def _launch(self, include_exports: bool) -> bool:
        """Start Ganesha; False if it exited during its start."""
        self._write_main_config(include_exports)
        self.pid_file.unlink(missing_ok=True)
        # BLKID_FILE: no libblkid cache. Ganesha tells filesystems apart by the UUID it
        # reads; a cached entry (trusted for ~2 s) could name a reused loop device's
        # previous filesystem.
        env = dict(
            os.environ,
            **self._env,
            DBUS_SYSTEM_BUS_ADDRESS=self.bus_address,
            BLKID_FILE="/dev/null",
        )
        argv = [
            _GANESHA,
            "-F",
            "-f",
            str(self.config_file),
            "-p",
            str(self.pid_file),
            "-L",
            str(self.log_file),
            "-N",
            "NIV_EVENT",
        ]
        started = time.monotonic()
        # Stable per instance (its state directory), so a restart resets its own sessions.
        node = "sm" + hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:12]
        proc = _spawn(argv, env, hostname=node, netns=self.netns)
        if not await self._wait_ready(proc):
            return False
        log.info(
            "started ganesha pid %s on nfs %s / mount %s in %.2fs (%s)",
            proc.pid,
            self.nfs_port,
            self.mount_port,
            time.monotonic() - started,
            self.state_dir,
        )
        return True

    def _failed_to_start(self, why: str) -> NfsServerDown:
        cause = self._host_cause()
        log.error(
            "ganesha %s did not start: %s%s. Log tail:\n%s",
            self.state_dir,
            why,
            f"; {cause}" if cause else "",
            self._log_tail(),
        )
        return NfsServerDown("the NFS server did not start; it is retried")

    def _host_cause(self) -> str:
        """What the host lacks, if Ganesha's log says so (no export is to blame then)."""
        if "Cannot register NFS" in self._log_tail(40):
            return (
                "it could not register NFSv3 with rpcbind: is rpcbind running on this host "
                "(`rpcbind -w`; scripts/install starts it)?"
            )
        return ""

    async def _load_missing(self) -> list[RefusedExport]:
        """Hand Ganesha every included export it does not serve (it skips an export it
        cannot set up, and a fallback start has none); set aside what it refuses."""
        with self._reaching("ShowExports"):
            live = await self._mgr.export_ids()
        refused = []
        for file in self._export_files():
            export_id = int(file.stem)
            if export_id in live:
                continue
            try:
                with self._reaching(f"AddExport {export_id}"):
                    await self._mgr.add(str(file), export_id)
            except DBusError as error:
                refused.append(self._set_aside(file, error))
        return refused

    def _set_aside(self, file: Path, error: DBusError) -> RefusedExport:
        export_id = int(file.stem)
        found = _PSEUDO.search(file.read_text(errors="replace"))
        aside = self._refused_file(export_id)
        os.replace(file, aside)
        self._accepted.pop(export_id, None)
        log.error(
            "ganesha %s refused export %s; its file is set aside as %s: %s",
            self.state_dir,
            export_id,
            aside,
            error,
        )
        return RefusedExport(export_id, found.group(1) if found else "")

    async def _start_bus(self) -> None:
        # A crash between starting a bus and writing its pidfile leaves one untracked.
        for pid in _running_with(_DBUS, str(self.bus_config)):
            await self._terminate(pid, "dbus-daemon")
        self.bus_config.write_text(_BUS_CONFIG.format(socket=self.bus_socket))
        self.bus_socket.unlink(missing_ok=True)
        proc = _spawn([_DBUS, f"--config-file={self.bus_config}", "--nofork", "--nopidfile"])
        _write_atomic(self.bus_pid_file, f"{proc.pid}\n")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log.error("dbus-daemon for %s exited with %s", self.state_dir, proc.returncode)
                raise NfsServerDown("the NFS server's bus did not start")
            if self.bus_socket.exists() and _can_connect_unix(self.bus_socket):
                return
            await asyncio.sleep(0.01)
        await self._terminate(proc.pid, "dbus-daemon")
        log.error("dbus-daemon for %s did not listen within 10s", self.state_dir)
        raise NfsServerDown("the NFS server's bus did not start")

    async def _wait_ready(self, proc: subprocess.Popen[bytes]) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                await self._mgr.ping()
            except DBusError:
                await asyncio.sleep(0.02)
                continue
            if self.netns or _can_connect_tcp(self.bind_address or "127.0.0.1", self.nfs_port):
                return True
            await asyncio.sleep(0.02)
        await self._terminate(proc.pid, "ganesha")
        raise self._failed_to_start(f"it did not serve within {self.start_timeout}s")

    async def stop(self, withdraw: bool = False) -> None:
        """Stop Ganesha and its bus (idempotent). Export files stay for the next start.

        `withdraw`, for a server going away for good: each export is withdrawn first, so
        that its FSAL ends its session with a cluster in order (a killed FSAL_CEPH's
        session outlives it for minutes, holding what it had open)."""
        async with self._lock:
            self._stopped = True
            if withdraw and self.is_alive():
                with contextlib.suppress(Exception):  # a best effort: the kill follows
                    for export_id in sorted(await self._mgr.export_ids()):
                        await self._mgr.remove(export_id)
            await self._terminate(self._ganesha_pid(), "ganesha")
            await self._terminate(self._bus_pid(), "dbus-daemon")
            self._mgr.close()
            for f in (self.pid_file, self.bus_pid_file, self.bus_socket):
                f.unlink(missing_ok=True)

    async def _terminate(self, pid: int | None, what: str) -> None:
        if pid is None:
            return
        comm, needle = (
            (_GANESHA, str(self.config_file))
            if what == "ganesha"
            else (_DBUS, str(self.bus_config))
        )
        for sig, wait in ((signal.SIGTERM, self.stop_timeout), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not _running(pid, comm, needle):
                    log.info("stopped %s pid %s with %s", what, pid, sig.name)
                    return
                await asyncio.sleep(0.02)
            log.warning("%s pid %s ignored %s for %.0fs", what, pid, sig.name, wait)
        raise Internal(f"{what} pid {pid} survived SIGKILL")

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _write_main_config(self, include_exports: bool = True) -> None:
        core = [
            "Protocols = 3, 4;",
            "Enable_UDP = false;",
            "Enable_NLM = false;",
            "Enable_RQUOTA = false;",
            f"NFS_Port = {self.nfs_port};",
            f"MNT_Port = {self.mount_port};",
            "Mount_Path_Pseudo = true;",
        ]
        if self.bind_address:
            core.append(f"Bind_addr = {self.bind_address};")
        if self.grace_seconds:
            lease = max(1, min(self.grace_seconds, 60))
            nfsv4 = (
                f"Graceless = false; Grace_Period = {self.grace_seconds}; Lease_Lifetime = {lease};"
            )
        else:
            nfsv4 = "Graceless = true;"
        text = (
            "# Written by sharemesh; exports live in exports.d/ (one file each).\n"
            f"NFS_CORE_PARAM {{ {' '.join(core)} }}\n"
            f'NFSV4 {{ {nfsv4} RecoveryRoot = "{self.state_dir / "recovery"}"; }}\n'
            "NFS_KRB5 { Active_krb5 = false; }\n"
            "EXPORT_DEFAULTS { Access_Type = None; Squash = No_Root_Squash; SecType = sys;"
            " Protocols = 3, 4; Transports = TCP; }\n"
        )
        for file in self._export_files() if include_exports else ():
            text += f'%include "{file}"\n'
        # Not synced to disk: every start writes it again from the export files.
        _write_atomic(self.config_file, text, durable=False)

    def _export_files(self) -> list[Path]:
        if not self.exports_dir.is_dir():
            return []
        return sorted(
            (p for p in self.exports_dir.glob("*.conf") if p.stem.isdigit()),
            key=lambda p: int(p.stem),
        )

    def _export_file(self, export_id: int) -> Path:
        """The accepted version, included in ganesha.conf."""
        return self.exports_dir / f"{export_id}.conf"

    def _staged_file(self, export_id: int) -> Path:
        """A version Ganesha has not accepted yet; never included."""
        return self.exports_dir / f"{export_id}.staged"

    def _refused_file(self, export_id: int) -> Path:
        """A file Ganesha refused at a start, kept for the operator; never included."""
        return self.exports_dir / f"{export_id}.refused"

    # ---- exports ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _reaching(self, what: str) -> Iterator[None]:
        """A D-Bus failure of a Ganesha that is restarting, or of its missing bus, is
        Unavailable (the caller retries); a refusal stays a DBusError."""
        try:
            yield
        except DBusError as error:
            if not error.transient:
                raise
            log.warning("ganesha %s unreachable during %s: %s", self.state_dir, what, error)
            raise NfsServerRestarting("the NFS server is restarting; retry shortly") from error

    def disconnect(self) -> None:
        """Drops this object's bus connection; Ganesha and its bus run on (an observer's,
        say, that looked at what Ganesha serves)."""
        self._mgr.close()

    def accepted(self, export_id: int) -> bool:
        """Whether a version of the export was ever accepted (its file is there): one
        that was not is served by no Ganesha of this instance, but for a crash between
        its add and its file."""
        return self._export_file(export_id).exists()

    async def serves(self, export: Export) -> bool:
        """Whether Ganesha serves this export (its id, on its path and pseudo path) right
        now, whatever its clients; one DisplayExport, not a list."""
        with self._reaching(f"DisplayExport {export.export_id}"):
            live = await self._mgr.display(export.export_id)
        return live is not None and (live.path, live.pseudo) == (export.path, export.pseudo)

    async def live_export_ids(self) -> set[int]:
        """Export ids Ganesha serves right now (without its pseudo root, 0)."""
        with self._reaching("ShowExports"):
            return await self._mgr.export_ids()

    async def apply(self, export: Export) -> None:
        """Add or update one export; returns once Ganesha reports the new client list.

        Raises ExportRefused when Ganesha refuses it: a new export then leaves no file, an
        update leaves the last accepted version serving. Raises Unavailable while
        Ganesha restarts; the restart applies this export, the latest asked for."""
        async with self._lock:
            await self._apply_locked(export)

    async def _apply_locked(self, export: Export) -> None:
        started = time.monotonic()
        export_id = export.export_id
        # Wanted from now on: a restart before this returns re-applies it, not an older one.
        self._known[export_id] = export
        if await self._serves_already(export):
            # After a restart of this service, Ganesha kept serving: one look, no reload.
            self._accepted[export_id] = export
            return
        self.exports_dir.mkdir(parents=True, exist_ok=True)
        staged = self._staged_file(export_id)
        _write_atomic(staged, export.render())
        try:
            with self._reaching(f"export {export_id}"):
                await self._load(export, staged)
            os.replace(staged, self._export_file(export_id))
        except ExportRefused:
            # Back to the last accepted version (or none), for restarts too.
            if export_id in self._accepted:
                self._known[export_id] = self._accepted[export_id]
            else:
                self._known.pop(export_id, None)
            raise
        finally:
            staged.unlink(missing_ok=True)
        self._refused_file(export_id).unlink(missing_ok=True)
        self._accepted[export_id] = export
        log.info(
            "export %s %s -> %s clients %s applied in %.3fs",
            export_id,
            export.pseudo,
            export.path,
            export.expected_clients(),
            time.monotonic() - started,
        )

    async def _serves_already(self, export: Export) -> bool:
        """Whether Ganesha serves `export` exactly, from its accepted file on disk."""
        try:
            on_disk = self._export_file(export.export_id).read_text()
        except FileNotFoundError:
            return False
        if on_disk != export.render():
            return False
        if export.export_id in self._loaded_from_files:
            self._loaded_from_files.discard(export.export_id)
            return True
        try:
            with self._reaching(f"export {export.export_id}"):
                live = await self._mgr.display(export.export_id)
        except DBusError:
            return False  # the full apply below says what is wrong
        return (
            live is not None
            and (live.path, live.pseudo) == (export.path, export.pseudo)
            and list(live.clients) == export.expected_clients()
        )

    async def _load(self, export: Export, staged: Path) -> None:
        """Hand Ganesha the staged file and check that it serves what was asked."""
        export_id = export.export_id
        try:
            if self._export_file(export_id).exists():
                await self._replace(export, staged)
            else:
                # Never accepted: a new export, added without a look first (it served
                # only if a crash came between its add and its file: then replaced).
                try:
                    await self._mgr.add(str(staged), export_id)
                except DBusError as error:
                    if "already active" not in error.message:
                        raise
                    await self._replace(export, staged)
                else:
                    if not export.expected_clients():
                        # Added means made from this file, and a harmless config error
                        # can only drop clients: with none to drop, nothing to confirm.
                        return
            confirmed = await self._mgr.display(export_id)
        except DBusError as error:
            if error.transient:
                raise
            log.error("ganesha %s refused export %s: %s", self.state_dir, export_id, error)
            await self._restore(export_id)
            raise ExportRefused(export) from error
        want = export.expected_clients()
        if (
            confirmed is None
            or (confirmed.path, confirmed.pseudo) != (export.path, export.pseudo)
            or list(confirmed.clients) != want
        ):
            log.error(
                "ganesha %s export %s: wanted clients %s, it reports %s",
                self.state_dir,
                export_id,
                want,
                confirmed,
            )
            await self._restore(export_id)
            raise ExportRefused(export)

    async def _replace(self, export: Export, staged: Path) -> None:
        """Ganesha's version of the export (if any) replaced by the staged file."""
        live = await self._mgr.display(export.export_id)
        if live is not None and (live.path, live.pseudo) != (export.path, export.pseudo):
            # UpdateExport keeps an export's identity; a new path is a new export.
            await self._mgr.remove(export.export_id)
            live = None
        if live is None:
            await self._mgr.add(str(staged), export.export_id)
        else:
            await self._mgr.update(str(staged), export.export_id)

    async def _restore(self, export_id: int) -> None:
        """After a refusal, Ganesha serves the last accepted file again, or nothing."""
        accepted = self._export_file(export_id)
        try:
            live = await self._mgr.display(export_id)
            if accepted.exists():
                if live is None:
                    await self._mgr.add(str(accepted), export_id)
                else:
                    await self._mgr.update(str(accepted), export_id)
            elif live is not None:
                await self._mgr.remove(export_id)
        except DBusError as error:
            log.error(
                "ganesha %s: could not restore export %s after a refusal: %s",
                self.state_dir,
                export_id,
                error,
            )

    async def remove(self, export_id: int) -> None:
        """Withdraw an export and delete its file; a missing export is success."""
        async with self._lock:
            await self._remove_locked(export_id)

    async def _remove_locked(self, export_id: int) -> None:
        # Forgotten and its file gone first: whatever happens next, no restart brings it back.
        self._known.pop(export_id, None)
        self._accepted.pop(export_id, None)
        for file in (
            self._export_file(export_id),
            self._staged_file(export_id),
            self._refused_file(export_id),
        ):
            file.unlink(missing_ok=True)
        if self.is_alive():
            try:
                with self._reaching(f"RemoveExport {export_id}"):
                    await self._mgr.remove(export_id)
            except Unavailable:
                if self.is_alive():
                    raise
                # It died meanwhile: its restart reads the files, which lack this export.
            except DBusError as error:
                if "not found" not in error.message.lower():
                    log.error("ganesha %s RemoveExport %s: %s", self.state_dir, export_id, error)
                    raise Internal(
                        f"the NFS server would not withdraw export {export_id}"
                    ) from error
        log.info("export %s removed", export_id)

    async def sync(self, exports: Iterable[Export]) -> None:
        """Make the served set, and the files on disk, exactly `exports`. An export that
        Ganesha refuses does not keep the others from being applied; the first refusal
        is raised at the end."""
        wanted = {e.export_id: e for e in exports}
        async with self._lock:
            with self._reaching("ShowExports"):
                live = await self._mgr.export_ids()
            on_disk = self._export_files() + list(self.exports_dir.glob("*.refused"))
            stale = live | {int(f.name.split(".")[0]) for f in on_disk if f.stem.isdigit()}
            for export_id in sorted(stale - wanted.keys()):
                await self._remove_locked(export_id)
            refused: list[ExportRefused] = []
            for export in wanted.values():
                try:
                    await self._apply_locked(export)
                except ExportRefused as error:
                    refused.append(error)
            if refused:
                raise refused[0]

    async def _reapply_locked(self, refused: Sequence[RefusedExport]) -> list[RefusedExport]:
        """After a restart: every export asked for, in its latest version, and only
        those (a removed one is forgotten). Continues past a refused export."""
        left = {r.export_id: r for r in refused}
        with self._reaching("ShowExports"):
            live = await self._mgr.export_ids()
        for export in sorted(self._known.values(), key=lambda e: e.export_id):
            if export.export_id in live and self._accepted.get(export.export_id) == export:
                continue  # Ganesha read it from its file at the start
            try:
                await self._apply_locked(export)
            except ExportRefused:
                left[export.export_id] = RefusedExport(export.export_id, export.pseudo)
                continue
            except Unavailable:
                raise  # it died again; the next restart re-applies everything
            except Exception:
                log.exception(
                    "ganesha %s: re-applying export %s failed", self.state_dir, export.export_id
                )
                left[export.export_id] = RefusedExport(export.export_id, export.pseudo)
                continue
            left.pop(export.export_id, None)
        return sorted(left.values(), key=lambda r: r.export_id)

    # ---- supervision -----------------------------------------------------------------

    async def supervise(
        self,
        on_restart: Callable[[Sequence[RefusedExport]], Awaitable[None]] | None = None,
        *,
        interval: float = 0.5,
        until: asyncio.Event | None = None,
    ) -> None:
        """Restart Ganesha whenever it dies and re-apply the latest version of every
        export, in one hold of the instance lock so no change in between is lost or
        undone; then call `on_restart` with the exports Ganesha refused.

        While both run, it sleeps until Ganesha or its bus exits (a pidfd each wakes it,
        so an idle host is not polled); a slow look every `_IDLE_CHECK` seconds is the
        net under that. Runs until cancelled, until `until` is set, or once `stop()`
        was called.
        """
        failures = 0
        while not (until is not None and until.is_set()):
            if failures or not await self._until_exit(_IDLE_CHECK, until):
                # A Ganesha that keeps failing to start is retried less and less often.
                await _wait(until, min(interval * 2**failures, 30.0))
            if self._stopped or (until is not None and until.is_set()):
                return
            if self.is_alive():
                continue
            died = time.monotonic()
            log.warning("ganesha %s is not running; restarting", self.state_dir)
            try:
                async with self._lock:
                    if self._stopped:
                        return
                    refused = await self._reapply_locked(await self._start_locked())
            except Exception:
                failures += 1
                log.exception(
                    "restarting ganesha %s failed (%d in a row); retrying",
                    self.state_dir,
                    failures,
                )
                continue
            failures = 0
            metrics.ganesha_restarted(self)
            log.info(
                "ganesha %s back in %.2fs; refused exports: %s",
                self.state_dir,
                time.monotonic() - died,
                [r.export_id for r in refused] or "none",
            )
            if on_restart is not None:
                try:
                    await on_restart(refused)
                except Exception:
                    log.exception("ganesha %s: after-restart callback failed", self.state_dir)

    async def _until_exit(self, timeout: float, until: asyncio.Event | None) -> bool:
        """Wait until Ganesha or its bus exits, `until` is set, or `timeout` passes.
        False when there was nothing to wait on: one of them is not running, or this
        kernel has no pidfds (the caller then polls)."""
        pids = [self._ganesha_pid(), self._bus_pid()]
        if None in pids:
            return False
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)

        fds: list[int] = []
        try:
            for pid in pids:
                assert pid is not None
                try:
                    fd = os.pidfd_open(pid)
                except ProcessLookupError:
                    return True  # exited just now: look at once
                except (AttributeError, OSError):
                    return False
                fds.append(fd)
                # Readable once the process exits (a zombie child counts).
                loop.add_reader(fd, on_exit)
            waits: set[asyncio.Future[Any]] = {exited}
            if until is not None:
                waits.add(asyncio.ensure_future(until.wait()))
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
            return True
        finally:
            for fd in fds:
                loop.remove_reader(fd)
                os.close(fd)


async def _wait(until: asyncio.Event | None, seconds: float) -> None:
    """Sleep `seconds`, or less if `until` is set meanwhile."""
    if until is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(until.wait(), seconds)


def _can_connect_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _can_connect_unix(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            sock.connect(str(path))
            return True
    except OSError:
        return False


_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="root"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


# libdbus takes unix socket paths of at most 99 bytes; deep state directories (a test's temp dir)
# exceed it, so such a bus lives in /run/sharemesh under a name derived from the state
# directory, which stays the same across restarts so a running Ganesha can be adopted.
_SOCKET_PATH_MAX = 99
_SHORT_SOCKET_DIR = Path("/run/sharemesh")


def _bus_socket_path(state_dir: Path) -> Path:
    beside = state_dir / "bus.sock"
    if len(str(beside).encode()) <= _SOCKET_PATH_MAX:
        return beside
    _SHORT_SOCKET_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:24]
    return _SHORT_SOCKET_DIR / f"bus-{digest}.sock"
