"""What an operator reads when Ganesha will not start because of the host, not an
export: the cause from Ganesha's own log, named in the error the driver-host logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sharemesh.ganesha import GaneshaInstance

# Ganesha 4.3's last lines when no rpcbind answers (seen on a host whose rpcbind died).
_NO_RPCBIND = (
    "02/12/2026 21:55:39 : epoch 6b1093db : sm : nfs-ganesha-12906[main] main :NFS STARTUP"
    " :WARN :No export entries found in configuration file !!!\n"
    "02/12/2026 21:55:39 : epoch 6b1093db : sm : nfs-ganesha-12906[main] __Register_program"
    " :DISP :MAJ :Cannot register NFS V3 on TCP\n"
)


def _instance(tmp_path: Path, log: str) -> GaneshaInstance:
    instance = GaneshaInstance(tmp_path / "ganesha", 1, 2)
    instance.state_dir.mkdir(parents=True)
    instance.log_file.write_text(log)
    return instance


def test_a_missing_rpcbind_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    instance = _instance(tmp_path, _NO_RPCBIND)
    with caplog.at_level(logging.ERROR, logger="sharemesh.ganesha"):
        error = instance._failed_to_start("it exited at start")  # noqa: SLF001
    assert "is rpcbind running on this host" in caplog.text
    # The error itself stays generic: it may reach a tenant's share as its message.
    assert "rpcbind" not in error.message


def test_other_failures_blame_nothing_on_the_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    instance = _instance(tmp_path, "02/12/2026 : main :CONFIG :CRIT :Error parsing export\n")
    with caplog.at_level(logging.ERROR, logger="sharemesh.ganesha"):
        instance._failed_to_start("it exited at start")  # noqa: SLF001
    assert "did not start: it exited at start. Log tail" in caplog.text
    assert "rpcbind" not in caplog.text
