"""Ganesha's ExportMgr over a private bus, on one connection kept open (jeepney).

A connection is made on first use and again after the bus or the connection failed:
no process is forked per call (a `dbus-send` per call cost a share's apply ~10 ms of
CPU three times over)."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

from jeepney import DBusAddress, HeaderFields, Message, MessageType, new_method_call
from jeepney.io.asyncio import DBusConnection, open_dbus_connection

_EXPORT_MGR = DBusAddress(
    "/org/ganesha/nfsd/ExportMgr",
    bus_name="org.ganesha.nfsd",
    interface="org.ganesha.nfsd.exportmgr",
)

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
        super().__init__(f"{name or 'dbus'}: {message}")
        self.name = name
        self.message = message

    @property
    def transient(self) -> bool:
        """Ganesha or its bus was unreachable (no connection, or no answer in time),
        rather than Ganesha refusing the call."""
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
        self._bus: _Connection | None = None

    async def _connected(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._bus is not None and self._bus.usable_on(loop):
            return self._bus
        fresh = await _Connection.open(self.bus_address)
        current = self._bus
        if current is not None and current.usable_on(loop):  # a concurrent call's
            fresh.close()
            return current
        self.close()
        self._bus = fresh
        return fresh

    async def call(self, method: str, signature: str = "", *args: Any) -> list[Any]:
        message = new_method_call(_EXPORT_MGR, method, signature or None, args)
        try:
            async with asyncio.timeout(self.timeout):
                reply = await (await self._connected()).call(message)
        except TimeoutError:
            self.close()  # a bus that hung is not trusted with the next call
            raise DBusError("", f"{method} timed out") from None
        except (OSError, EOFError, ValueError) as error:
            # No bus (refused, gone mid-call) or a broken stream: reconnect next time.
            self.close()
            raise DBusError("", f"{method}: {error or type(error).__name__}") from None
        return _unwrap(reply)

    def close(self) -> None:
        """Drop the connection; the next call makes a new one."""
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.close()

    async def ping(self) -> None:
        await self.call("ShowExports")

    async def export_ids(self) -> set[int]:
        _time, exports = await self.call("ShowExports")
        return {int(entry[0]) for entry in exports if int(entry[0]) != 0}

    async def display(self, export_id: int) -> LiveExport | None:
        try:
            values = await self.call("DisplayExport", "q", export_id)
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
        reply = await self.call("AddExport", "ss", file, f"EXPORT(Export_Id={export_id})")
        return str(reply[0]) if reply else ""

    async def update(self, file: str, export_id: int) -> str:
        reply = await self.call("UpdateExport", "ss", file, f"EXPORT(Export_Id={export_id})")
        return str(reply[0]) if reply else ""

    async def remove(self, export_id: int) -> None:
        await self.call("RemoveExport", "q", export_id)


class _Connection:
    """One authenticated connection to the bus and the replies awaited on it."""

    def __init__(self, conn: DBusConnection) -> None:
        self._conn = conn
        self.loop = asyncio.get_running_loop()
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        self._serials = itertools.count(1)
        self._receiver = self.loop.create_task(self._receive(), name="ganesha-dbus-receiver")

    @classmethod
    async def open(cls, address: str) -> _Connection:
        return cls(await open_dbus_connection(address))

    def usable_on(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Open, and made on `loop` (a test may run several loops in turn)."""
        return loop is self.loop and not self._receiver.done()

    async def call(self, message: Message) -> Message:
        if self._receiver.done():
            raise EOFError("the bus connection is closed")
        serial = next(self._serials)
        reply = self._waiting[serial] = self.loop.create_future()
        try:
            await self._conn.send(message, serial=serial)
            return await reply
        finally:
            self._waiting.pop(serial, None)

    async def _receive(self) -> None:
        try:
            while True:
                message = await self._conn.receive()
                serial = message.header.fields.get(HeaderFields.reply_serial)
                reply = self._waiting.get(serial) if serial is not None else None
                if reply is not None and not reply.done():
                    reply.set_result(message)
        except (OSError, EOFError, ValueError) as error:
            gone = error if isinstance(error, EOFError) else EOFError(f"the bus failed: {error}")
            for reply in self._waiting.values():
                if not reply.done():
                    reply.set_exception(gone)
        finally:
            self._conn.writer.close()

    def close(self) -> None:
        if self.loop.is_closed():
            return  # its socket went with its loop
        self._receiver.cancel()
        for reply in self._waiting.values():
            if not reply.done():
                reply.cancel()
        self._conn.writer.close()


def _unwrap(reply: Message) -> list[Any]:
    """The reply's values (structs as tuples, arrays as lists), or its error raised."""
    if reply.header.message_type == MessageType.error:
        name = str(reply.header.fields.get(HeaderFields.error_name, ""))
        body = reply.body
        raise DBusError(name, str(body[0]) if body else "")
    return list(reply.body)
