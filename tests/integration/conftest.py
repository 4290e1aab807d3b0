"""Fixtures the integration tests share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    """1 MiB of random bytes in a file, to write over NFS and compare after."""
    path = tmp_path / "payload"
    path.write_bytes(os.urandom(1 << 20))
    return path
