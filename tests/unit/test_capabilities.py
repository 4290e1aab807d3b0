"""Typed capabilities and the capability strings the scheduler and the api read."""

from __future__ import annotations

from pathlib import Path

from sharemesh.driver_host.drivers import (
    Capabilities,
    FakeDriver,
    FakeDriverConfig,
    LocalDriver,
    LocalDriverConfig,
    PoolStats,
    create,
)
from sharemesh.driver_host.drivers.base import unsupported
from sharemesh.runtime import capacity
from sharemesh.runtime.errors import FailedPrecondition
from sharemesh.scheduler.filters.capabilities import matches


def test_every_capability_renders_as_manila_writes_it() -> None:
    strings = Capabilities(
        shrink_support=True,
        thin_provisioning=True,
        max_over_subscription_ratio=1.5,
        reserved_percentage=10,
        availability_zone="zone-a",
    ).as_strings()
    assert strings == {
        "snapshot_support": "false",
        "create_share_from_snapshot_support": "false",
        "revert_to_snapshot_support": "false",
        "mount_snapshot_support": "false",
        "shrink_support": "true",
        "thin_provisioning": "true",
        "driver_handles_share_servers": "false",
        "max_over_subscription_ratio": "1.5",
        "reserved_percentage": "10",
        "availability_zone": "zone-a",
        "storage_protocol": "NFS",
    }
    # What the scheduler's filters and the api's checks make of them.
    assert matches(strings["shrink_support"], "<is> True")
    assert matches(strings["snapshot_support"], "<is> False")
    assert capacity.provisions_thin(strings, {})
    assert capacity.limit_gib(10, strings, thin=True) == 13.5


def test_custom_capabilities_join_but_never_override_the_drivers() -> None:
    strings = Capabilities(custom={"tier": "gold", "shrink_support": "true"}).as_strings()
    assert strings["tier"] == "gold"
    assert strings["shrink_support"] == "false"


def test_a_pool_reports_its_capabilities_as_strings() -> None:
    pool = PoolStats("p", 10, 10, 0, offers=Capabilities(snapshot_support=True))
    assert pool.capabilities["snapshot_support"] == "true"
    assert pool.capabilities == pool.offers.as_strings()


def test_the_local_driver_reports_what_it_always_did(tmp_path: Path) -> None:
    config = LocalDriverConfig(
        pool_dir=tmp_path,
        capacity_gib=6,
        nfs_port=1,
        mount_port=2,
        state_dir=tmp_path,
        max_over_subscription_ratio=1.5,
        availability_zone="z",
        capabilities={"tier": "gold", "thin_provisioning": "false"},
    )
    strings = LocalDriver(config).capabilities().as_strings()
    assert strings == strings | {
        "tier": "gold",
        "snapshot_support": "false",
        "shrink_support": "false",
        "thin_provisioning": "true",
        "driver_handles_share_servers": "false",
        "storage_protocol": "NFS",
        "availability_zone": "z",
        "max_over_subscription_ratio": "1.5",
        "reserved_percentage": "0.0",
    }


async def test_the_fake_driver_is_built_from_config_and_reports_what_it_is_given() -> None:
    driver = create("fake", {"capacity_gib": "8", "shrink_support": "true", "pool_name": "p"})
    assert isinstance(driver, FakeDriver)
    (pool,) = (await driver.stats()).pools
    assert pool.name == "p" and pool.total_gib == 8
    assert pool.offers.shrink_support and not pool.offers.snapshot_support
    assert pool.capabilities["shrink_support"] == "true"
    both = FakeDriver(FakeDriverConfig(snapshot_support=True)).capabilities()
    assert both.snapshot_support and both.create_share_from_snapshot_support


def test_a_refusal_names_the_capability() -> None:
    error = unsupported("shrink_support", "cannot shrink share s from 2 to 1 GiB")
    assert isinstance(error, FailedPrecondition)
    assert "shrink_support" in error.message
    assert error.reason == "SHRINK_NOT_SUPPORTED"
    assert error.metadata == {"capability": "shrink_support"}
    assert unsupported("revert_to_snapshot_support", "no").reason == (
        "REVERT_TO_SNAPSHOT_NOT_SUPPORTED"
    )
