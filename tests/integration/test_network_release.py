"""Releasing network servers without etcd: a gateway or share server whose service died
(etcd dead too) is found from its state directory and the kernel alone; its Ganesha,
D-Bus daemon, namespace, veths and bridge all go, and its export files stay."""

from __future__ import annotations

import hashlib
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sharemesh.ganesha import Export, GaneshaInstance, VfsFsal, client_rules
from sharemesh.network import (
    bridge_name,
    bridges_of,
    ensure_bridge,
    ensure_namespace,
    ensure_storage_leg,
    join,
    namespace_exists,
    netns_name,
    release_servers,
    remove_bridge,
    remove_namespace,
)
from sharemesh.runtime.ports import free_port

from support import ensure_rpcbind, processes_mentioning

pytestmark = pytest.mark.integration


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


async def _server(state_dir: Path, kind: str, bridge: str, address: str, leg: bool) -> str:
    """What a NetworkServers.serve leaves on the host: a namespace on the bridge (and a
    storage leg), a Ganesha in it exporting a directory; returns the namespace."""
    netns = netns_name(kind, secrets.token_hex(6))
    await ensure_bridge(bridge)
    await ensure_namespace(netns)
    await join(bridge, netns, address)
    if leg:
        await ensure_storage_leg(netns, 7)
    data = state_dir / f"data-{netns}"
    data.mkdir()
    ganesha = GaneshaInstance(
        state_dir / netns, free_port(), free_port(), netns=netns, bind_address=address.split("/")[0]
    )
    await ganesha.start()
    await ganesha.sync(
        [Export(export_id=3, path=str(data), pseudo="/s", fsal=VfsFsal(), clients=client_rules([]))]
    )
    assert ganesha.is_alive()
    return netns


@pytest.fixture
async def made(tmp_path: Path) -> AsyncIterator[tuple[Path, list[str], list[str]]]:
    """A state dir, and the namespaces and bridges a test makes (removed afterwards)."""
    ensure_rpcbind()
    namespaces: list[str] = []
    bridges: list[str] = []
    try:
        yield tmp_path, namespaces, bridges
    finally:
        for directory in tmp_path.glob("sm-*"):
            await GaneshaInstance(directory, 0, 0).stop()
        for netns in namespaces:
            await remove_namespace(netns)
        for bridge in bridges:
            await remove_bridge(bridge)
        assert not processes_mentioning(str(tmp_path))


async def test_release_stops_every_server_and_removes_its_plumbing(
    made: tuple[Path, list[str], list[str]],
) -> None:
    state_dir, namespaces, bridges = made
    bridges += [bridge_name(f"release-{secrets.token_hex(4)}") for _ in range(2)]
    namespaces += [
        await _server(state_dir, "gw", bridges[0], "10.78.0.2/24", leg=True),
        await _server(state_dir, "gw", bridges[1], "10.78.0.2/24", leg=False),
    ]
    # Another owner's server under the same directory is not this release's to stop.
    other = await _server(state_dir, "ss", bridges[0], "10.78.0.3/24", leg=False)
    namespaces.append(other)
    assert await bridges_of(namespaces[0]) == [bridges[0]]

    await release_servers("gateways", state_dir)

    for netns in namespaces[:2]:
        assert not await namespace_exists(netns)
        assert not processes_mentioning(str(state_dir / netns))
        assert (state_dir / netns / "exports.d").is_dir()  # the next start serves them again
    links = _links()
    assert bridges[0] not in links and bridges[1] not in links
    assert "sms" + hashlib.sha256(namespaces[0].encode()).hexdigest()[:12] not in links  # its leg
    assert await namespace_exists(other) and GaneshaInstance(state_dir / other, 0, 0).is_alive()

    await release_servers("shareServers", state_dir)
    assert not await namespace_exists(other)
    assert not processes_mentioning(str(state_dir))
    await release_servers("gateways", state_dir)  # again: nothing left, nothing fails


async def test_release_of_a_directory_that_was_never_made(tmp_path: Path) -> None:
    await release_servers("gateways", tmp_path / "absent")
