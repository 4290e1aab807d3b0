"""What the glusterfs driver asks glusterd: a volume's state and its directory quotas.

Gluster has no library for these, so this runs the `gluster` CLI and reads only its
`--xml` output, never its free text. glusterd runs one transaction at a time across the
host: a command that meets another's lock is retried with backoff, within a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from sharemesh.runtime.errors import Internal, NotFound, Unavailable

log = logging.getLogger("sharemesh.driver_host.glusterfs")

_BUSY = ("another transaction", "locking failed", "is in progress")
_DOWN = ("connection failed", "cannot connect", "is not running", "not operational")


@dataclass(frozen=True)
class Limit:
    """A directory quota: its hard limit and what is stored under it, in bytes."""

    hard_bytes: int
    used_bytes: int


@dataclass(frozen=True)
class VolumeInfo:
    started: bool
    options: dict[str, str]


class GlusterCli:
    """The `gluster` CLI for one volume, on the host's glusterd."""

    def __init__(self, volume: str, deadline: float = 30.0) -> None:
        self.volume = volume
        self.deadline = deadline

    async def _xml(self, *args: str) -> ET.Element:
        """The command's `<cliOutput>` when opRet is 0; Unavailable while glusterd is
        down or busy past the deadline; Internal otherwise (the text is logged)."""
        argv = ["gluster", "--mode=script", "--xml", *args]
        started = time.monotonic()
        delay = 0.1
        while True:
            process = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            out, err = await process.communicate()
            try:
                root = ET.fromstring(out)
                ret, message = root.findtext("opRet", "-1"), root.findtext("opErrstr", "")
            except ET.ParseError:  # no XML at all: glusterd is not there to answer
                root, ret, message = None, "-1", (err or out).decode(errors="replace")
            if root is not None and ret == "0":
                return root
            lowered = message.lower()
            transient = root is None or any(word in lowered for word in _BUSY + _DOWN)
            if not transient:
                raise _Refused(message.strip())
            if time.monotonic() - started > self.deadline:
                log.error("%s failed: %s", " ".join(argv), message.strip())
                raise Unavailable("the Gluster volume's manager is busy or down; retry shortly")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def info(self) -> VolumeInfo:
        try:
            root = await self._xml("volume", "info", self.volume)
        except _Refused as error:
            raise NotFound(f"Gluster volume {self.volume} does not exist") from error
        volume = root.find("volInfo/volumes/volume")
        if volume is None:
            raise NotFound(f"Gluster volume {self.volume} does not exist")
        options = {
            option.findtext("name", ""): option.findtext("value", "")
            for option in volume.iterfind("options/option")
        }
        return VolumeInfo(started=volume.findtext("status") == "1", options=options)

    async def limits(self) -> dict[str, Limit]:
        """Every directory quota of the volume, by path."""
        try:
            root = await self._xml("volume", "quota", self.volume, "list")
        except _Refused as error:
            if "no quota configured" in error.message.lower():
                return {}
            raise _failed(f"could not list the quotas of volume {self.volume}", error) from error
        return {
            limit.findtext("path", ""): Limit(
                int(limit.findtext("hard_limit", "0")), _bytes(limit.findtext("used_space", "0"))
            )
            for limit in root.iterfind("volQuota/limit")
            if limit.findtext("hard_limit", "").isdigit()
        }

    async def limit(self, path: str) -> Limit | None:
        return (await self.limits()).get(path)

    async def set_limit(self, path: str, hard_bytes: int) -> None:
        try:
            await self._xml("volume", "quota", self.volume, "limit-usage", path, str(hard_bytes))
        except _Refused as error:
            raise _failed(f"could not set the quota of {path}", error) from error

    async def remove_limit(self, path: str) -> None:
        """Removes the directory's quota; one it does not have is success."""
        if await self.limit(path) is None:
            return
        try:
            await self._xml("volume", "quota", self.volume, "remove", path)
        except _Refused as error:
            raise _failed(f"could not remove the quota of {path}", error) from error


class _Refused(Internal):
    """glusterd answered, and said no (not retried). The message is glusterd's, for the
    log only: what callers raise (`_failed`) names no path of the host."""


def _failed(what: str, error: _Refused) -> Internal:
    log.error("%s: glusterd said: %s", what, error.message)
    return Internal(what)


def _bytes(text: str) -> int:
    """`used_space` is bytes; a limit on a path gone missing reports `N/A`."""
    return int(text) if text.isdigit() else 0
