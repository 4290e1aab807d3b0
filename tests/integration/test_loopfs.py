"""The local driver's images on a real, small filesystem: a thick image that does not fit
fails cleanly and leaves nothing grown or half-made."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sharemesh.driver_host.drivers import _loopfs
from sharemesh.runtime.errors import ResourceExhausted

from support import loops_under, mounts_under

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
