"""The local driver's images on a real, small filesystem: a thick image that does not fit
fails cleanly and leaves nothing grown or half-made. Its loop devices and mounts, made
by system calls: what losetup sees, concurrent attaches, a detach of a device still open,
failures reported as the tools' were."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sharemesh.driver_host.drivers import _loopfs
from sharemesh.runtime.commands import CommandError
from sharemesh.runtime.errors import ResourceExhausted

from support import loops_under, mounts_under

pytestmark = pytest.mark.integration

GIB = 1 << 30


@pytest.fixture
def small_pool(tmp_path: Path) -> Iterator[Path]:
    """A pool directory on a 1.5 GiB ext4, which (unlike XFS or tmpfs) keeps what a
    failed `posix_fallocate` got before it ran out of space."""
    backing, pool = tmp_path / "pool.ext4", tmp_path / "pool"
    pool.mkdir()
    subprocess.run(["truncate", "-s", "1536M", str(backing)], check=True)
    subprocess.run(["mkfs.ext4", "-q", str(backing)], check=True)
    subprocess.run(["mount", "-o", "loop", str(backing), str(pool)], check=True)
    try:
        yield pool
    finally:
        subprocess.run(["umount", str(pool)], check=True)  # frees the loop device too
        assert not mounts_under(pool) and not loops_under(tmp_path)


async def test_a_thick_image_that_does_not_fit_is_not_left_grown(small_pool: Path) -> None:
    image = small_pool / "a.img"
    assert await _loopfs.create_image(image, GIB, reserve=True)
    assert _loopfs.image_size(image) == GIB and _loopfs.reserved_bytes(image) >= GIB
    assert not await _loopfs.create_image(image, GIB, reserve=True)  # there already

    with pytest.raises(ResourceExhausted):
        await _loopfs.grow_image(image, 2 * GIB, reserve=True)
    assert _loopfs.image_size(image) == GIB  # not part way grown

    other = small_pool / "b.img"
    with pytest.raises(ResourceExhausted):
        await _loopfs.create_image(other, GIB, reserve=True)
    assert sorted(p.name for p in small_pool.iterdir()) == ["a.img", "lost+found"]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Path]:
    """A directory for images; nothing mounted or attached under it may outlive the test."""
    yield tmp_path
    assert not mounts_under(tmp_path) and not loops_under(tmp_path)


async def _images(directory: Path, count: int) -> list[Path]:
    images = [directory / f"s{i}.img" for i in range(count)]
    await asyncio.gather(*(_loopfs.create_image(image, GIB) for image in images))
    return images


def _holders(device: str) -> str:
    return subprocess.run(["losetup", "-l", device], capture_output=True, text=True).stdout


async def test_concurrent_mounts_get_a_device_each_that_losetup_lists(host: Path) -> None:
    images = await _images(host, 8)
    mounts = [host / "mnt" / image.stem for image in images]
    devices = await asyncio.gather(
        *(_loopfs.mount(image, mnt, fresh=True) for image, mnt in zip(images, mounts))
    )
    try:
        assert len(set(devices)) == len(images)
        for image, mnt, device in zip(images, mounts, devices):
            assert _loopfs.mounted_device(mnt) == device
            listed = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True)
            assert listed.stdout.split(":")[0] == device
            assert str(image) in _holders(device)
        # A repeat finds the mount, and a mount of an image with a device reuses it.
        assert await _loopfs.mount(images[0], mounts[0]) == devices[0]
        await _loopfs.unmount(mounts[0])
        assert await _loopfs.mount(images[0], mounts[0]) == devices[0]
    finally:
        await asyncio.gather(*(_loopfs.release(mnt, img) for img, mnt in zip(images, mounts)))
    assert not any(_loopfs.loop_devices(image) for image in images)


async def test_a_detach_waits_for_a_device_still_open(host: Path) -> None:
    (image,) = await _images(host, 1)
    mnt = host / "mnt"
    device = await _loopfs.mount(image, mnt, fresh=True)
    await _loopfs.unmount(mnt)
    held = os.open(device, os.O_RDONLY)  # as a last close after an unmount can come late
    asyncio.get_running_loop().call_later(0.3, os.close, held)
    await _loopfs.detach(image, device)
    assert _loopfs.backing_file(device) is None and not _loopfs.loop_devices(image)
    await _loopfs.detach(image, device)  # a free device: done already


async def test_a_detach_waits_for_its_image_not_for_the_next_one(
    host: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Freed, a device may be bound to another image at once (the kernel offers the
    lowest free one): the detach is done then, not waiting its 5 s for it."""
    first, second = await _images(host, 2)
    device = await _loopfs.attach(first, fresh=True)
    held = os.open(device, os.O_RDONLY)
    detaching = asyncio.create_task(_loopfs.detach(first, device))
    autoclear = Path(f"/sys/block/{Path(device).name}/loop/autoclear")
    while autoclear.read_text().strip() != "1":  # asked: freed at the last close
        await asyncio.sleep(0.01)
    # Blocking the loop: the detach looks again only once the device is bound again.
    os.close(held)
    subprocess.run(["losetup", device, str(second)], check=True)
    try:
        with caplog.at_level(logging.WARNING, logger="sharemesh.driver_host.loopfs"):
            await detaching
        assert "still in use" not in caplog.text
        assert _loopfs.loop_devices(second) == [device] and not _loopfs.loop_devices(first)
    finally:
        await _loopfs.detach(second, device)


async def test_failures_are_command_errors_with_the_kernels_reason(host: Path) -> None:
    (image,) = await _images(host, 1)
    mnt = host / "mnt"
    with pytest.raises(CommandError, match=f"at {mnt} with nosuchoption") as caught:
        await _loopfs.mount(image, mnt, fresh=True, options="nosuchoption")
    assert caught.value.returncode == errno.EINVAL
    assert "Invalid argument" in caught.value.stderr
    with pytest.raises(CommandError, match="No such file"):
        await _loopfs.attach(host / "missing.img", fresh=True)

    device = await _loopfs.mount(image, mnt)  # the device the failed mount attached
    opened = (mnt / "open").open("w")
    try:
        with pytest.raises(CommandError) as caught:
            await _loopfs.unmount(mnt, attempts=2)
        assert caught.value.returncode == errno.EBUSY and "busy" in caught.value.stderr
        await _loopfs.unmount(mnt, lazy=True)  # as the pool's is at a stop
        assert _loopfs.mounted_device(mnt) is None
    finally:
        opened.close()
    await _loopfs.detach(image, device)
    assert not _loopfs.loop_devices(image)


async def test_a_grown_image_shows_on_its_device(host: Path) -> None:
    (image,) = await _images(host, 1)
    mnt = host / "mnt"
    device = await _loopfs.mount(image, mnt, fresh=True)
    try:
        await _loopfs.grow_image(image, 2 * GIB)
        await _loopfs.refresh_size(device)
        sectors = Path(f"/sys/block/{Path(device).name}/size").read_text()
        assert int(sectors) * 512 == 2 * GIB
        await _loopfs.grow_filesystem(mnt)
        st = os.statvfs(mnt)
        assert st.f_blocks * st.f_frsize > int(1.9 * GIB)
    finally:
        await _loopfs.release(mnt, image)
