"""Tenant isolation of the data path: whatever rule strings one tenant sends, each is
refused at the call or applied so that Ganesha serves it, and when Ganesha (or the whole
mesh) restarts, every other tenant's share keeps serving its data."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import grpc
import pytest

from sharemesh.client import Client
from sharemesh.launcher import LocalMesh
from sharemesh.v1 import share_service_pb2 as ss

from chaos_ops import check_host, kill9, live_pid, mountable, read_write
from mesh_ops import MESH_CONFIG, AccessRule, Share, create_share, delete_share, read, write
from support import assert_host_clean

pytestmark = pytest.mark.e2e
# What a hostile or careless tenant may put in `access_to`.
HOSTILE = (
    "fe80::1%eth0",  # an IPv6 scope id
    "fe80::1%a;}x{",
    "1.2.3.4;}EXPORT{",
    "1.2.3.4; Access_Type = RW",
    "10.0.0.1\x00",
    "10.0.0.2\n}",
    "\x1b[31m10.0.0.3",
    "10.0.0.4\t",
    "10.0.0.5, 10.0.0.6",
    "10.0.0.0/33",
    "a" * 10_240,
    "10.0.0.7/" + "9" * 10_000,
    "localhost",
    "nfs-client.example.invalid",
    "",
)
# Every client: each on a share of its own, so none hides another as a duplicate.
EVERYONE = ("0.0.0.0/0", "::/0", "*")
RESTARTED_WITHIN = 10.0  # seconds from Ganesha's new start to the data served again


async def _rules(client: Client, share: str) -> list[AccessRule]:
    found = await client.call(
        client.shares.ListAccessRules, ss.ListAccessRulesRequest(parent=share)
    )
    return list(found.access_rules)


async def try_rule(client: Client, share: str, access_to: str) -> AccessRule | None:
    """The rule, applied; or None if the call refused it with INVALID_ARGUMENT naming
    access_to, having changed nothing. Anything else fails the test."""
    before = await _rules(client, share)
    request = ss.CreateAccessRuleRequest(
        parent=share,
        access_rule=AccessRule(access_to=access_to, access_level=AccessRule.READ_WRITE),
    )
    try:
        op = await client.call(client.shares.CreateAccessRule, request)
    except grpc.aio.AioRpcError as refused:
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, (access_to, refused)
        assert "access_to" in refused.details(), (access_to, refused.details())
        assert await _rules(client, share) == before, access_to
        return None
    rule = await client.wait(op, AccessRule)  # an Operation ending in error fails here
    assert rule is not None and rule.state == AccessRule.ACTIVE, (access_to, rule)
    got = await client.call(client.shares.GetShare, ss.GetShareRequest(name=share))
    assert got.state == Share.ACTIVE, (access_to, got.state_message)
    return rule


async def until_served(share: Share, data: Path, scratch: Path, timeout: float) -> float:
    """Seconds until `data.bin` reads back as `data` over NFSv4 and v3."""
    started = time.monotonic()
    back = scratch / "back.bin"
    while True:
        v4, v3 = await read(share, back, "data.bin", 4), None
        if v4[0] == 0 and back.read_bytes() == data.read_bytes():
            v3 = await read(share, back, "data.bin", 3)
            if v3[0] == 0 and back.read_bytes() == data.read_bytes():
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{share.name} not served within {timeout}s: {v4} {v3}")
        await asyncio.sleep(0.1)


async def until_host_true(mesh: LocalMesh, timeout: float) -> None:
    """Ganesha serves exactly the live shares' exports, from exactly their files."""
    deadline = time.monotonic() + timeout
    while problems := await check_host(mesh):
        if time.monotonic() > deadline:
            raise AssertionError(problems)
        await asyncio.sleep(0.2)


async def hostile_beta(beta: Client, alpha_share: Share, scratch: Path, data: Path) -> list[Share]:
    """Beta's shares with every hostile rule tried on them; alpha's share serves
    after each. The shares with an every-client rule come first."""
    wide = [await create_share(beta, "beta", f"everyone-{i}") for i in range(len(EVERYONE))]
    for share, access_to in zip(wide, EVERYONE):
        if access_to != "*":  # manila-csi's default client: it must work
            assert await try_rule(beta, share.name, access_to), access_to
        else:
            await try_rule(beta, share.name, access_to)
    target = await create_share(beta, "beta", "hostile")
    for access_to in HOSTILE:
        rule = await try_rule(beta, target.name, access_to)
        print(f"\n{access_to[:40]!r}: " + (f"applied as {rule.access_to}" if rule else "refused"))
        await until_served(alpha_share, data, scratch, 2)
    return [*wide, target]


async def test_hostile_rules_and_a_ganesha_kill_never_stop_another_tenants_share(
    mesh: LocalMesh, alpha: Client, beta: Client, tmp_path: Path
) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(64 << 10))
    kept = await create_share(alpha, "alpha", "kept")
    assert await try_rule(alpha, kept.name, "127.0.0.1")
    assert (await write(kept, data, "data.bin"))[0] == 0
    betas = await hostile_beta(beta, kept, tmp_path, data)
    assert not await read_write(betas[0].export_locations[0], tmp_path, "everyone-v4")
    await until_host_true(mesh, 2)

    old = await live_pid(mesh, "ganesha", 5)
    assert old is not None
    await kill9(old)
    new = await live_pid(mesh, "ganesha", 30)
    assert new is not None and new != old, "the supervisor did not restart Ganesha"
    took = await until_served(kept, data, tmp_path, RESTARTED_WITHIN)
    print(f"\nalpha's share served again {took:.2f}s after Ganesha restarted")
    await until_host_true(mesh, RESTARTED_WITHIN)
    assert not await read_write(betas[0].export_locations[0], tmp_path, "everyone-again")
    for share in betas:
        got = await beta.call(beta.shares.GetShare, ss.GetShareRequest(name=share.name))
        assert got.state == Share.ACTIVE, (share.name, got.state_message)
        assert all(r.state == AccessRule.ACTIVE for r in await _rules(beta, share.name))

    for client, share in ((alpha, kept), *((beta, s) for s in betas)):
        await delete_share(client, share.name)
    await until_host_true(mesh, 5)


async def test_hostile_rules_never_stop_another_tenants_share_across_a_mesh_restart(
    tmp_path: Path,
) -> None:
    state, config = tmp_path / "state", tmp_path / "mesh.toml"
    config.write_text(MESH_CONFIG.format(capacity_gib=8))
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(64 << 10))
    async with LocalMesh(state, config, api_port=0, lease_ttl_seconds=3) as mesh:
        async with (
            Client(mesh.api_address, "alpha-key") as alpha,
            Client(mesh.api_address, "beta-key") as beta,
        ):
            kept = await create_share(alpha, "alpha", "kept")
            assert await try_rule(alpha, kept.name, "127.0.0.1")
            assert (await write(kept, data, "data.bin"))[0] == 0
            betas = await hostile_beta(beta, kept, tmp_path, data)
    assert_host_clean(state)

    async with LocalMesh(state, config, api_port=0, lease_ttl_seconds=3) as mesh:
        started = time.monotonic()
        took = await until_served(kept, data, tmp_path, RESTARTED_WITHIN)
        print(f"\nalpha's share served {took:.2f}s after the mesh was up again")
        await until_host_true(mesh, RESTARTED_WITHIN)
        assert await mountable(betas[0].export_locations[0])
        async with (
            Client(mesh.api_address, "alpha-key") as alpha,
            Client(mesh.api_address, "beta-key") as beta,
        ):
            for client, share in ((alpha, kept), *((beta, s) for s in betas)):
                got = await client.call(client.shares.GetShare, ss.GetShareRequest(name=share.name))
                assert got.state == Share.ACTIVE, (share.name, got.state_message)
                await delete_share(client, share.name)
        assert time.monotonic() - started < 60
    assert_host_clean(state)
