"""`sharemesh project`, `key` and `quota` as an operator runs them, against a real mesh:
a project and a key made, the key's secret shown once and working, limits set and
shown, and a revoked key refused with the documented exit code."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sharemesh.launcher import LocalMesh

from mesh_ops import TENANT_KEYS, running_mesh

pytestmark = pytest.mark.e2e
SHAREMESH = str(Path(sys.executable).with_name("sharemesh"))
CONFIG = (
    """
[[backends]]
name = "local"
[backends.options]
capacity_gib = 4
"""
    + TENANT_KEYS
)


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalMesh]:
    async with running_mesh(tmp_path_factory, CONFIG) as mesh:
        yield mesh


async def cli(mesh: LocalMesh, token: str, *argv: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "SHAREMESH_ENDPOINT": mesh.api_address,
        "SHAREMESH_TOKEN": token,
        "HOME": str(mesh.state_dir),  # no user config file
    }
    env.pop("SHAREMESH_PROJECT", None)
    process = await asyncio.create_subprocess_exec(
        SHAREMESH,
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_operator_makes_a_project_a_key_and_a_quota(mesh: LocalMesh) -> None:
    admin = mesh.admin_token
    code, out, _ = await cli(mesh, admin, "project", "create", "omega", "--description", "ops")
    assert code == 0 and "projects/omega" in out
    code, out, _ = await cli(mesh, admin, "project", "list")
    assert code == 0 and "projects/omega" in out

    code, out, err = await cli(
        mesh, admin, "key", "create", "--project", "omega", "--role", "reader", "--json"
    )
    assert code == 0 and "shown only now" in err
    key = json.loads(out)
    assert key["role"] == "READER" and key["secret"].startswith("smk_")
    code, out, _ = await cli(mesh, admin, "key", "list", "--project", "omega")
    assert code == 0 and key["name"] in out and key["secret"] not in out

    code, out, _ = await cli(
        mesh, admin, "quota", "set", "--project", "omega", "--shares", "3", "--gib", "2"
    )
    assert code == 0
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert rows["shares"] == ["0", "3"] and rows["share_gib"] == ["0", "2", "GiB"]
    assert rows["snapshots"] == ["0", "none"]

    # The reader's key implies its project, reads its quota, and may not change it.
    code, out, _ = await cli(mesh, key["secret"], "quota", "show", "--json")
    assert code == 0 and json.loads(out)["limits"]["shares"] == "3"
    code, _, err = await cli(mesh, key["secret"], "quota", "set", "--shares", "9")
    assert code == 1 and "PERMISSION_DENIED" in err

    code, out, _ = await cli(mesh, admin, "key", "revoke", key["name"])
    assert code == 0 and "revoked" in out
    code, _, err = await cli(mesh, key["secret"], "quota", "show", "--project", "omega")
    assert code == 3 and "UNAUTHENTICATED" in err
    code, _, err = await cli(mesh, admin, "quota", "set", "--project", "omega")
    assert code == 2 and "name a limit" in err
