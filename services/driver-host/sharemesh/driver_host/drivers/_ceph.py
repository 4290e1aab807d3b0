"""Talking to a Ceph cluster: mon and mgr commands through librados, with JSON in and
out (as Manila's CephFS driver does), never by parsing the CLI's text.

librados blocks, so every command runs in a thread; one connection is kept and made
again after a failure. A command that fails answers `CephError` with Ceph's errno; a
cluster that cannot be reached is `Unavailable` (the mesh retries it).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import threading
from pathlib import Path
from typing import Any

from sharemesh.runtime.errors import Unavailable

log = logging.getLogger("sharemesh.driver_host.cephfs")

# A cluster that is down or restarting (a retry heals it). EAGAIN is not among them: the
# volumes module answers it for a clone not ready yet, which its caller handles.
_TRANSIENT = {errno.ETIMEDOUT, errno.ECONNREFUSED, errno.ENOTCONN, errno.ESHUTDOWN}


class CephError(Exception):
    """A command Ceph refused: its errno (positive) and its own words, for logs."""

    def __init__(self, command: str, code: int, message: str) -> None:
        super().__init__(f"{command}: {errno.errorcode.get(code, code)} {message}")
        self.code = code
        self.message = message


class CephCluster:
    """One librados client of one cluster, as `client.<client>` with `keyring`."""

    def __init__(self, conf: Path, keyring: Path, client: str, timeout: float = 30.0) -> None:
        self.conf = conf
        self.keyring = keyring
        self.client = client
        self.timeout = timeout
        self._rados: Any = None
        self._guard = threading.Lock()

    def _connected(self) -> Any:
        import rados  # Debian's python3-rados; only a CephFS backend needs it

        with self._guard:
            if self._rados is None:
                cluster = rados.Rados(
                    conffile=str(self.conf),
                    name=f"client.{self.client}",
                    conf={"keyring": str(self.keyring)},
                )
                try:
                    cluster.connect(timeout=int(self.timeout))
                except rados.Error as error:
                    cluster.shutdown()
                    raise Unavailable(f"cannot reach the Ceph cluster: {error}") from None
                self._rados = cluster
            return self._rados

    def close(self) -> None:
        with self._guard:
            if self._rados is not None:
                self._rados.shutdown()
                self._rados = None

    async def mgr(self, prefix: str, **args: Any) -> Any:
        """A mgr command (`fs subvolume …`); its JSON answer, or None when it has none."""
        return await asyncio.to_thread(self._command, "mgr", prefix, args)

    async def mon(self, prefix: str, **args: Any) -> Any:
        """A mon command (`df`, `fs authorize`, `auth get`…)."""
        return await asyncio.to_thread(self._command, "mon", prefix, args)

    def _command(self, target: str, prefix: str, args: dict[str, Any]) -> Any:
        import rados

        cluster = self._connected()
        call = cluster.mgr_command if target == "mgr" else cluster.mon_command
        request = json.dumps({"prefix": prefix, "format": "json", **args})
        try:
            ret, out, outs = call(request, b"", timeout=int(self.timeout))
        except rados.Error as error:
            # The connection may be what broke: make a new one next time.
            self.close()
            raise Unavailable(f"Ceph {target} command {prefix!r} failed: {error}") from None
        if ret < 0:
            code = -ret
            if code in _TRANSIENT:
                raise Unavailable(f"Ceph {target} command {prefix!r}: {outs or code}")
            raise CephError(prefix, code, outs)
        text = out.decode().strip()
        return json.loads(text) if text.startswith(("{", "[")) else (text or None)
