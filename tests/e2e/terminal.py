"""A real terminal for CLI tests: an interactive bash on a pseudo-terminal, typed into
and read back as a person would see it (readline, completion, TTY-only output)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import signal
import struct
import subprocess
import termios
import time
import uuid
from pathlib import Path

_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x07")


class Terminal:
    """`async with Terminal(env) as t:` a bash whose stdin, stdout and stderr are a pty."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self._env = {**env, "TERM": "xterm", "PS1": "$ ", "HISTFILE": "/dev/null"}
        self._cwd = cwd
        self._fd = -1
        self._process: subprocess.Popen[bytes] | None = None
        self.screen = ""  # everything printed so far, escapes included
        self._seen = 0  # how much of it expect() has consumed

    async def __aenter__(self) -> Terminal:
        primary, secondary = os.openpty()
        # Wide enough that readline never wraps a typed command line.
        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 400, 0, 0))
        os.set_blocking(primary, False)
        self._process = subprocess.Popen(
            ["bash", "--norc", "--noprofile", "-i"],
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            env=self._env,
            cwd=self._cwd,
            start_new_session=True,
        )
        os.close(secondary)
        self._fd = primary
        await self.expect("$ ")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._process is not None
        deadline = time.monotonic() + 5
        try:
            os.killpg(self._process.pid, signal.SIGHUP)
        except ProcessLookupError:
            pass
        while self._process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        os.close(self._fd)

    def type(self, keys: str) -> None:
        os.write(self._fd, keys.encode())

    async def expect(self, text: str, timeout: float = 120.0) -> str:
        """Reads until `text` appears after what an earlier expect consumed."""
        start = self._seen
        deadline = time.monotonic() + timeout
        while text not in self.screen[start:]:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {text!r} on the terminal; it shows:\n{self.screen[start:]}"
                )
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                await asyncio.sleep(0.02)
                continue
            except OSError:  # the shell is gone
                raise AssertionError(
                    f"the shell ended; it showed:\n{self.screen[start:]}"
                ) from None
            self.screen += chunk.decode(errors="replace")
        self._seen = self.screen.index(text, start) + len(text)
        return self.screen[start : self._seen]

    async def run(self, command: str, timeout: float = 180.0) -> tuple[int, str]:
        """Types a command line; (its exit code, what it showed, escapes removed)."""
        marker = uuid.uuid4().hex[:8]
        # Quoted apart, so the echoed command line never matches the printed marker.
        self.type(f'{command}; echo "rc-{marker}""=$?"\n')
        seen = await self.expect(f"rc-{marker}=", timeout)
        rest = await self.expect("\n", 10)
        shown = seen.split("\n", 1)[1] if "\n" in seen else ""  # drop the echoed command
        return int(rest.strip()), plain(shown.rsplit(f"rc-{marker}=", 1)[0])


def plain(text: str) -> str:
    """What a person reads: escapes gone, each carriage-return overwrite resolved."""
    lines = []
    for line in _ESCAPES.sub("", text).replace("\r\n", "\n").split("\n"):
        lines.append(line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r"))
    return "\n".join(lines)
