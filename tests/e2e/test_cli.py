"""The CLI as a tenant uses it, in a real terminal (bash on a pty): credentials from a
config file, progress while waiting, mount lines that work, short ids, `--no-wait`
then `operations wait`, one-line errors with their exit codes, a closed pipe, and
completion of a subcommand."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from terminal import Terminal

from sharemesh.launcher import LocalMesh

from support import run

pytestmark = pytest.mark.e2e

VENV_BIN = Path(sys.executable).parent


@pytest.fixture
async def terminal(mesh: LocalMesh, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A shell with the CLI on PATH and alpha's credentials in a config file only."""
    config = tmp_path / "config.toml"
    config.write_text(f'endpoint = "{mesh.api_address}"\ntoken = "alpha-key"\nproject = "alpha"\n')
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SHAREMESH_") and k != "PROMPT_COMMAND"
    }
    env |= {"PATH": f"{VENV_BIN}:{env['PATH']}", "SHAREMESH_CONFIG": str(config)}
    async with Terminal(env, tmp_path) as shell:
        yield shell


async def test_the_tenant_journey_in_a_terminal(terminal: Terminal, tmp_path: Path) -> None:
    code, out = await terminal.run("sharemesh share create web --size 1")
    assert code == 0, out
    # Progress was drawn on the terminal, ending at 100 %, then the share.
    assert "[####################] 100%" in out, out
    assert "ACTIVE" in out and "1 GiB" in out, out

    code, out = await terminal.run("sharemesh access create web --to 127.0.0.1")
    assert code == 0 and "127.0.0.1/32" in out and "READ_WRITE" in out, out

    code, out = await terminal.run("sharemesh share show web")
    assert code == 0, out
    rows = {
        (row + [""])[0]: (row + [""])[1] for row in (ln.split(None, 1) for ln in out.splitlines())
    }
    assert rows["state"] == "ACTIVE"
    assert rows["mount"].startswith("mount -t nfs -o vers=4.1,port="), rows
    assert rows["mount"].endswith(" /mnt/web"), rows
    # The printed URL is ready to use: a real NFS client writes and reads through it.
    url = rows["nfs_url"]
    assert url.startswith("nfs://127.0.0.1/shares/") and "version=3" in url, url
    base, _, query = url.partition("?")
    (tmp_path / "hello").write_text("hello from the cli")
    code, out = await run("nfs-cp", str(tmp_path / "hello"), f"{base}/hello?{query}")
    assert code == 0, out
    code, out = await run("nfs-cp", f"{base}/hello?{query}", str(tmp_path / "back"))
    assert code == 0 and (tmp_path / "back").read_text() == "hello from the cli", out

    code, out = await terminal.run("sharemesh share resize web --size 2")
    assert code == 0 and "2 GiB" in out and "100%" in out, out

    code, out = await terminal.run("sharemesh snapshot create web s1")
    assert code == 0 and "READY" in out, out
    code, out = await terminal.run("sharemesh snapshot list web -f value -c name -c state")
    assert code == 0 and out.split() == ["projects/alpha/shares/web/snapshots/s1", "READY"], out

    # --no-wait prints the Operation as JSON; `operations wait` follows it to the end.
    code, out = await terminal.run("sharemesh share create later --size 1 --no-wait --json")
    assert code == 0, out
    started = json.loads(out)
    assert started["name"].startswith("projects/alpha/operations/"), started
    assert started["target"] == "projects/alpha/shares/later" and started["verb"] == "create"
    code, out = await terminal.run(f"sharemesh operations wait {started['name']}")
    assert code == 0 and "ACTIVE" in out and "projects/alpha/shares/later" in out, out
    code, out = await terminal.run(
        f"sharemesh operations show {started['name'].rsplit('/', 1)[1]} -f json"
    )
    assert code == 0 and json.loads(out)["done"] is True, out

    # Errors: one line with the code and a hint, and the documented exit codes.
    code, out = await terminal.run("sharemesh share show nope")
    assert code == 1, out
    (line,) = out.strip().splitlines()
    assert line.startswith("error: NOT_FOUND") and "hint:" in line, out
    code, out = await terminal.run("sharemesh share create Bad_Id --size 1")
    assert code == 1, out
    (line,) = out.strip().splitlines()
    assert line.startswith("error: INVALID_ARGUMENT") and "share_id" in line, out
    code, out = await terminal.run("sharemesh share create x --size 0")
    assert code == 2 and "at least 1 GiB" in out and "required" not in out, out
    code, out = await terminal.run("SHAREMESH_TOKEN=wrong sharemesh share list")
    assert code == 3 and "UNAUTHENTICATED" in out and "SHAREMESH_TOKEN" in out, out
    code, out = await terminal.run("SHAREMESH_ENDPOINT=127.0.0.1:1 sharemesh share list")
    assert code == 3 and "UNAVAILABLE" in out and "SHAREMESH_ENDPOINT" in out, out

    # A reader that stops early ends the CLI quietly.
    code, out = await terminal.run("sharemesh share list | head -1")
    assert code == 0 and out.split() == ["NAME", "SIZE_GIB", "STATE", "POOL"], out
    code, out = await terminal.run("sharemesh share list | true")  # closed before it writes
    assert code == 0 and out.strip() == "", out

    code, out = await terminal.run("sharemesh share delete web")
    assert code == 1 and "FAILED_PRECONDITION" in out and "force" in out, out
    code, out = await terminal.run("sharemesh snapshot delete web/s1")
    assert code == 0 and "deleted projects/alpha/shares/web/snapshots/s1" in out, out
    for share in ("web", "later"):
        code, out = await terminal.run(f"sharemesh share delete {share}")
        assert code == 0 and f"deleted projects/alpha/shares/{share}" in out, out
    code, out = await terminal.run("sharemesh share list --json")
    assert code == 0 and json.loads(out) == [], out


async def test_completion_completes_a_subcommand(terminal: Terminal) -> None:
    code, out = await terminal.run("source <(sharemesh completion bash)")
    assert code == 0, out
    terminal.type("sharemesh operations wa\t")
    await terminal.expect("sharemesh operations wait ", 10)
    terminal.type("\x15")  # Ctrl-U: clear the line
    terminal.type("sharemesh snap\t")
    await terminal.expect("sharemesh snapshot ", 10)
    terminal.type("\x15")
    terminal.type("sharemesh share create x --si\t")
    await terminal.expect("--size ", 10)
    terminal.type("\x15")
    code, out = await terminal.run("sharemesh --version")
    assert code == 0 and out.strip().startswith("sharemesh "), out


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "sharemesh"),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


async def test_a_tenant_key_implies_its_project(mesh: LocalMesh, tmp_path: Path) -> None:
    """No --project, no SHAREMESH_PROJECT, none in a config file: the key's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAREMESH_")}
    env |= {
        "SHAREMESH_ENDPOINT": mesh.api_address,
        "SHAREMESH_TOKEN": "beta-key",
        "SHAREMESH_CONFIG": str(tmp_path / "absent.toml"),
    }
    code, out, err = await _cli(env, "share", "create", "implied", "--size", "1", "-f", "json")
    assert code == 0, err
    assert json.loads(out)["name"] == "projects/beta/shares/implied"
    code, out, err = await _cli(env, "share", "delete", "implied")
    assert code == 0 and "deleted projects/beta/shares/implied" in out, err
    # An admin key has no project of its own: the CLI asks for one, and changes nothing.
    code, out, err = await _cli({**env, "SHAREMESH_TOKEN": mesh.admin_token}, "share", "list")
    assert code == 2 and "name a project with --project" in err, err
