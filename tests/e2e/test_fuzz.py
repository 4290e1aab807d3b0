"""The public API under generated requests: every method of every public service, a few
hundred requests each, as tenants (mostly), as an admin and with no or a bad key.

No call may answer INTERNAL or UNKNOWN or hang; a refused call changes nothing in etcd;
no message names a host path or an etcd key; a tenant's answers name only its own
project; no service crashes or restarts. See tests/fuzzing.py for the generator and the
checks; bench/bench_fuzz.py runs the same with more examples.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sharemesh.launcher import LocalMesh

from fuzzing import Fuzzer, Method, children_pids, public_methods, tidy

pytestmark = pytest.mark.e2e

# Deterministic (derandomized) examples per method: 34 methods in about two minutes.
EXAMPLES = 200


@pytest.fixture(scope="module")
async def fuzzer(mesh: LocalMesh) -> AsyncIterator[Fuzzer]:
    assert mesh.etcd is not None and mesh.config is not None
    tokens = {
        "alpha": "alpha-key",
        "beta": "beta-key",
        "admin": mesh.admin_token,
        "nobody": "",
        "bogus": "not-a-key",
    }
    async with Fuzzer(
        mesh.api_address, mesh.etcd.endpoint, mesh.config.etcd.prefix, tokens, str(mesh.state_dir)
    ) as running:
        assert await tidy(running) == []
        yield running


@pytest.mark.parametrize("method", public_methods(), ids=lambda m: m.id)
async def test_generated_requests(mesh: LocalMesh, fuzzer: Fuzzer, method: Method) -> None:
    pids = children_pids(mesh)
    await asyncio.to_thread(fuzzer.run_method, method, EXAMPLES, asyncio.get_running_loop())
    leftovers = await tidy(fuzzer)
    restarted = {
        name: (pid, children_pids(mesh).get(name))
        for name, pid in pids.items()
        if children_pids(mesh).get(name) != pid
    }
    findings = fuzzer.report([method.id])
    assert not restarted, f"services restarted while fuzzing {method.id}: {restarted}"
    assert not findings, (
        f"{len(findings)} finding(s), statuses {dict(fuzzer.counts[method.id])}:\n"
        + "\n".join(findings)
    )
    assert not leftovers, leftovers
