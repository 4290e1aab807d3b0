"""Ganesha's ExportMgr over a private bus, through `dbus-send` and its printed replies."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from sharemesh.runtime import commands

_DEST = "org.ganesha.nfsd"
_PATH = "/org/ganesha/nfsd/ExportMgr"
_IFACE = "org.ganesha.nfsd.exportmgr"

# Bit of a client's export options that grants write access (RW has it, RO lacks it);
# read from DisplayExport replies of Ganesha 4.3.
_WRITE_ACCESS = 0x100

# Errors of a Ganesha that is restarting or a bus that is gone, not of the request: a
# retry after the restart succeeds.
_TRANSIENT = {
    f"org.freedesktop.DBus.Error.{name}"
    for name in (
        "ServiceUnknown",
        "NameHasNoOwner",
        "NoReply",
        "NoServer",
        "Disconnected",
        "Timeout",
        "TimedOut",
        "NoNetwork",
        "LimitsExceeded",
    )
}


class DBusError(Exception):
    """A failed call: `name` is the D-Bus error name (empty when the bus itself failed)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name or 'dbus-send'}: {message}")
        self.name = name
        self.message = message

    @property
    def transient(self) -> bool:
        """Ganesha or its bus was unreachable (dbus-send could not connect or timed
        out, or Ganesha did not answer), rather than Ganesha refusing the call."""
        return not self.name or self.name in _TRANSIENT


@dataclass(frozen=True)
class LiveExport:
    """An export as Ganesha holds it right now."""

    export_id: int
    path: str
    pseudo: str
    clients: tuple[tuple[str, str], ...]
    """(client, "RW" | "RO") in Ganesha's match order."""


class ExportMgr:
    def __init__(self, bus_address: str, timeout: float = 10.0) -> None:
        self.bus_address = bus_address
        self.timeout = timeout

    async def call(self, method: str, *args: str) -> list[Any]:
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.bus_address)
        try:
            done = await commands.run(
                "dbus-send",
                "--system",
                "--print-reply",
                f"--reply-timeout={int(self.timeout * 1000)}",
                f"--dest={_DEST}",
                _PATH,
                f"{_IFACE}.{method}",
                *args,
                env=env,
                timeout=self.timeout + 5,
                check=False,
            )
        except commands.CommandError:
            raise DBusError("", f"{method} timed out") from None
        if done.returncode != 0:
            text = done.stderr.strip()
            name, _, message = text.removeprefix("Error ").partition(": ")
            if not name.startswith("org."):
                name, message = "", text
            raise DBusError(name, message)
        return parse_reply(done.stdout)

    async def ping(self) -> None:
        await self.call("ShowExports")

    async def export_ids(self) -> set[int]:
        _time, exports = await self.call("ShowExports")
        return {int(entry[0]) for entry in exports if int(entry[0]) != 0}

    async def display(self, export_id: int) -> LiveExport | None:
        try:
            values = await self.call("DisplayExport", f"uint16:{export_id}")
        except DBusError as error:
            if "not found" in error.message.lower():
                return None
            raise
        eid, path, pseudo, _tag, clients = values[:5]
        return LiveExport(
            export_id=int(eid),
            path=path,
            pseudo=pseudo,
            clients=tuple((c[0], "RW" if int(c[8]) & _WRITE_ACCESS else "RO") for c in clients),
        )

    async def add(self, file: str, export_id: int) -> str:
        reply = await self.call(
            "AddExport", f"string:{file}", f"string:EXPORT(Export_Id={export_id})"
        )
        return str(reply[0]) if reply else ""

    async def update(self, file: str, export_id: int) -> str:
        reply = await self.call(
            "UpdateExport", f"string:{file}", f"string:EXPORT(Export_Id={export_id})"
        )
        return str(reply[0]) if reply else ""

    async def remove(self, export_id: int) -> None:
        await self.call("RemoveExport", f"uint16:{export_id}")


def parse_reply(text: str) -> list[Any]:
    """dbus-send's printed reply as nested lists: structs and arrays become lists."""
    lines = text.splitlines()[1:]  # the "method return ..." header
    stack: list[list[Any]] = [[]]
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line in ("struct {", "array [", "dict entry("):
            stack.append([])
        elif line in ("}", "]", ")"):
            done = stack.pop()
            stack[-1].append(done)
        elif line.startswith("string "):
            value = line[len("string ") :]
            stack[-1].append(value[1:-1] if value.startswith('"') else value)
        else:
            kind, _, value = line.partition(" ")
            if kind == "boolean":
                stack[-1].append(value == "true")
            elif kind in ("double",):
                stack[-1].append(float(value))
            elif kind in ("byte", "int16", "uint16", "int32", "uint32", "int64", "uint64"):
                stack[-1].append(int(value))
            else:
                stack[-1].append(value)
    return stack[0]
