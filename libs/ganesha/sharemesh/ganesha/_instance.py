"""One Ganesha server and its private D-Bus daemon, tracked by pidfiles.

Both run in their own session, so they outlive the service that started them (a crashed
service leaves its shares served); the next incarnation adopts them by pidfile.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from sharemesh.runtime.errors import Internal, InvalidArgument

from ._dbus import DBusError, ExportMgr
from ._export import Export, _check_text

log = logging.getLogger("sharemesh.ganesha")

_GANESHA = "ganesha.nfsd"
_DBUS = "dbus-daemon"

# Children this process started: polled so an exited child is reaped, not left a zombie
# (on these machines PID 1 does not reap orphans either).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


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


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _spawn(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    # Not asyncio's subprocess: its transport kills a still-running child when garbage
    # collected or when the loop closes, and these must outlive both.
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
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
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
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
        self._known: dict[int, Export] = {}
        self._stopped = True

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

    async def start(self) -> None:
        """Adopt the running Ganesha, or start one serving every export file on disk."""
        async with self._lock:
            await self._start_locked()

    async def _start_locked(self) -> None:
        if self.adopt():
            return
        # A Ganesha whose bus died cannot be managed any more: replace both.
        await self._terminate(self._ganesha_pid(), "ganesha")
        for d in (self.state_dir, self.exports_dir, self.state_dir / "recovery"):
            d.mkdir(parents=True, exist_ok=True)
        if self._bus_pid() is None:
            await self._start_bus()
        self._write_main_config()
        self.pid_file.unlink(missing_ok=True)
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.bus_address)
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
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        started = time.monotonic()
        proc = _spawn(argv, env)
        await self._wait_ready(proc)
        self._stopped = False
        log.info(
            "started ganesha pid %s on nfs %s / mount %s in %.2fs (%s)",
            proc.pid,
            self.nfs_port,
            self.mount_port,
            time.monotonic() - started,
            self.state_dir,
        )

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
                raise Internal(f"dbus-daemon for {self.state_dir} exited with {proc.returncode}")
            if self.bus_socket.exists() and _can_connect_unix(self.bus_socket):
                return
            await asyncio.sleep(0.01)
        raise Internal(f"dbus-daemon for {self.state_dir} did not listen within 10s")

    async def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise Internal(
                    f"ganesha exited with {proc.returncode} at start; log tail:\n{self._log_tail()}"
                )
            try:
                await self._mgr.ping()
            except DBusError:
                await asyncio.sleep(0.02)
                continue
            if self.netns or _can_connect_tcp(self.bind_address or "127.0.0.1", self.nfs_port):
                return
            await asyncio.sleep(0.02)
        await self._terminate(proc.pid, "ganesha")
        raise Internal(
            f"ganesha did not serve within {self.start_timeout}s; log:\n{self._log_tail()}"
        )

    async def stop(self) -> None:
        """Stop Ganesha and its bus (idempotent). Export files stay for the next start."""
        async with self._lock:
            self._stopped = True
            await self._terminate(self._ganesha_pid(), "ganesha")
            await self._terminate(self._bus_pid(), "dbus-daemon")
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

    def _write_main_config(self) -> None:
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
        for f in self._export_files():
            text += f'%include "{f}"\n'
        _write_atomic(self.config_file, text)

    def _export_files(self) -> list[Path]:
        if not self.exports_dir.is_dir():
            return []
        return sorted(
            (p for p in self.exports_dir.glob("*.conf") if p.stem.isdigit()),
            key=lambda p: int(p.stem),
        )

    def _export_file(self, export_id: int) -> Path:
        return self.exports_dir / f"{export_id}.conf"

    # ---- exports ---------------------------------------------------------------------

    def known_exports(self) -> list[Export]:
        """The exports this object applied (and did not remove), for re-applying."""
        return list(self._known.values())

    async def serves(self, export: Export) -> bool:
        """Whether Ganesha serves this export (its id, on its path and pseudo path) right
        now, whatever its clients; one DisplayExport, not a list."""
        live = await self._mgr.display(export.export_id)
        return live is not None and (live.path, live.pseudo) == (export.path, export.pseudo)

    async def live_export_ids(self) -> set[int]:
        """Export ids Ganesha serves right now (without its pseudo root, 0)."""
        return await self._mgr.export_ids()

    async def apply(self, export: Export) -> None:
        """Add or update one export; returns once Ganesha reports the new client list."""
        async with self._lock:
            await self._apply_locked(export)

    async def _apply_locked(self, export: Export) -> None:
        started = time.monotonic()
        self.exports_dir.mkdir(parents=True, exist_ok=True)
        file = self._export_file(export.export_id)
        _write_atomic(file, export.render())
        self._write_main_config()
        try:
            live = await self._mgr.display(export.export_id)
            if live is not None and (live.path != export.path or live.pseudo != export.pseudo):
                # UpdateExport keeps an export's identity; a new path is a new export.
                await self._mgr.remove(export.export_id)
                live = None
            if live is None:
                try:
                    await self._mgr.add(str(file), export.export_id)
                except DBusError as error:
                    if "already active" not in error.message:
                        raise
                    await self._mgr.update(str(file), export.export_id)
            else:
                await self._mgr.update(str(file), export.export_id)
            confirmed = await self._mgr.display(export.export_id)
        except DBusError as error:
            raise Internal(
                f"ganesha {self.state_dir} refused export {export.export_id}: {error}"
            ) from error
        want = export.expected_clients()
        if (
            confirmed is None
            or confirmed.pseudo != export.pseudo
            or list(confirmed.clients) != want
        ):
            raise Internal(
                f"ganesha {self.state_dir} export {export.export_id}: wanted clients {want}, "
                f"it reports {confirmed}"
            )
        self._known[export.export_id] = export
        log.info(
            "export %s %s -> %s clients %s applied in %.3fs",
            export.export_id,
            export.pseudo,
            export.path,
            want,
            time.monotonic() - started,
        )

    async def remove(self, export_id: int) -> None:
        """Withdraw an export and delete its file; a missing export is success."""
        async with self._lock:
            await self._remove_locked(export_id)

    async def _remove_locked(self, export_id: int) -> None:
        if self.is_alive():
            try:
                await self._mgr.remove(export_id)
            except DBusError as error:
                if "not found" not in error.message.lower():
                    raise Internal(
                        f"ganesha {self.state_dir} RemoveExport {export_id}: {error}"
                    ) from error
        self._export_file(export_id).unlink(missing_ok=True)
        if self.state_dir.is_dir():
            self._write_main_config()
        self._known.pop(export_id, None)
        log.info("export %s removed", export_id)

    async def sync(self, exports: Iterable[Export]) -> None:
        """Make the served set, and the files on disk, exactly `exports`."""
        wanted = {e.export_id: e for e in exports}
        async with self._lock:
            stale = (await self._mgr.export_ids()) | {int(f.stem) for f in self._export_files()}
            for export_id in sorted(stale - wanted.keys()):
                await self._remove_locked(export_id)
            for export in wanted.values():
                await self._apply_locked(export)

    # ---- supervision -----------------------------------------------------------------

    async def supervise(
        self,
        on_restart: Callable[[], Awaitable[None]] | None = None,
        *,
        interval: float = 0.5,
        until: asyncio.Event | None = None,
    ) -> None:
        """Restart Ganesha whenever it dies, then call `on_restart` to re-apply exports.

        Runs until cancelled, until `until` is set, or once `stop()` was called.
        """
        failures = 0
        while not (until is not None and until.is_set()):
            # A Ganesha that keeps failing to start is retried less and less often.
            await asyncio.sleep(min(interval * 2**failures, 30.0))
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
                    await self._start_locked()
                if on_restart is not None:
                    await on_restart()
            except Exception:
                failures += 1
                log.exception(
                    "restarting ganesha %s failed (%d in a row); retrying",
                    self.state_dir,
                    failures,
                )
                continue
            failures = 0
            log.info("ganesha %s back in %.2fs", self.state_dir, time.monotonic() - died)


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
