"""The fake driver's test hooks: injected faults, held calls, and what happens to its
server. (The contract itself it passes in `test_driver.py`, as every driver does.)"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from sharemesh.driver_host.drivers import (
    AccessRuleSpec,
    FakeDriver,
    FakeDriverConfig,
    ShareSpec,
    create,
)
from sharemesh.runtime.errors import InvalidArgument, Unavailable

RW = [AccessRuleSpec("127.0.0.1", "READ_WRITE")]
SHARE = ShareSpec("s1", "projects/p/locations/l/shares/s1", 1, "default", 7)


@pytest.fixture
async def fake() -> FakeDriver:
    driver = FakeDriver(FakeDriverConfig(capacity_gib=4))
    await driver.start()
    return driver


async def test_the_next_calls_fail_as_told_and_change_nothing(fake: FakeDriver) -> None:
    fake.fail_next("create_share", Unavailable("backend away"), times=2)
    for _ in range(2):
        with pytest.raises(Unavailable):
            await fake.create_share(SHARE)
        assert "s1" not in fake.backend.shares
    await fake.create_share(SHARE)  # the third call goes through
    assert fake.count("create_share") == 3
    assert fake.calls[-1] == ("create_share", "s1")

    with pytest.raises(ValueError, match="not a contract method"):
        fake.fail_next("create_shares", Unavailable("typo"))


async def test_a_blocked_call_waits_until_released(fake: FakeDriver) -> None:
    await fake.create_share(SHARE)
    gate = fake.block("update_access")
    call = asyncio.create_task(fake.update_access(SHARE, RW))
    await asyncio.sleep(0.05)
    assert not call.done() and fake.backend.access("s1", "127.0.0.1") is None
    gate.set()
    await asyncio.wait_for(call, 1)
    assert fake.backend.access("s1", "127.0.0.1") == "READ_WRITE"


async def test_after_a_server_crash_only_ensure_serves_again(fake: FakeDriver) -> None:
    await fake.create_share(SHARE)
    await fake.update_access(SHARE, RW)
    fake.backend.crash()
    with pytest.raises(PermissionError):
        fake.backend.mount("s1", "127.0.0.1")
    await fake.ensure_share(SHARE, RW)
    assert fake.backend.mount("s1", "127.0.0.1") == "READ_WRITE"


async def test_a_stopped_server_refuses_clients_and_calls(fake: FakeDriver) -> None:
    await fake.create_share(SHARE)
    await fake.update_access(SHARE, RW)
    await fake.stop(stop_servers=True)
    with pytest.raises(ConnectionRefusedError):
        fake.backend.mount("s1", "127.0.0.1")
    with pytest.raises(Unavailable):
        await fake.update_access(SHARE, RW)
    await fake.start()
    assert fake.backend.mount("s1", "127.0.0.1") == "READ_WRITE"


async def test_supervise_tells_restarts_with_the_refused_shares(fake: FakeDriver) -> None:
    await fake.create_share(SHARE)
    await fake.update_access(SHARE, RW)
    told: list[Sequence[str]] = []

    async def on_restart(refused: Sequence[str]) -> None:
        told.append(refused)

    supervising = asyncio.create_task(fake.supervise(on_restart))
    await asyncio.sleep(0)
    fake.backend.restart_server()
    fake.backend.restart_server(refused=["s1"])
    await asyncio.sleep(0.05)
    assert told == [[], ["s1"]]
    assert fake.backend.access("s1", "127.0.0.1") is None  # refused: serves nothing

    await fake.stop(stop_servers=False)
    await asyncio.wait_for(supervising, 1)  # stop ends supervision


def test_bad_options_are_refused_naming_the_field() -> None:
    with pytest.raises(InvalidArgument, match="options.capacity_gib"):
        create("fake", {"capacity_gib": "lots"})
    with pytest.raises(InvalidArgument, match="options.max_over_subscription_ratio"):
        create("fake", {"max_over_subscription_ratio": 0.5})
