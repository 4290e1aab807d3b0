"""Export ids come back only after their quarantine, and never run out while one can."""

import pytest
from google.protobuf import timestamp_pb2

from sharemesh.runtime import export_ids
from sharemesh.runtime.coordination import keys
from sharemesh.runtime.errors import ResourceExhausted


def at(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def test_a_fresh_ganesha_hands_out_one_then_counts_up() -> None:
    assert export_ids.choose(0, None, at(0), 60) == export_ids.Choice(1, reused=False)
    assert export_ids.choose(7, None, at(0), 60) == export_ids.Choice(8, reused=False)


def test_a_released_id_waits_out_its_quarantine() -> None:
    released = export_ids.released(3, at(100))
    assert export_ids.choose(9, released, at(159.9), 60) == export_ids.Choice(10, reused=False)
    assert export_ids.choose(9, released, at(160), 60) == export_ids.Choice(3, reused=True)


def test_all_ids_used_answers_resource_exhausted_naming_when_one_frees() -> None:
    # 65535 is kept for a driver's own export (RESERVED_EXPORT_ID), never handed out.
    assert export_ids.choose(65533, None, at(0), 60).export_id == 65534
    with pytest.raises(ResourceExhausted, match="all 65534 export ids"):
        export_ids.choose(65534, None, at(0), 60)
    waiting = export_ids.released(12, at(100))
    with pytest.raises(ResourceExhausted, match="free after"):
        export_ids.choose(65534, waiting, at(120), 60)
    assert export_ids.choose(65534, waiting, at(161), 60).export_id == 12


def test_released_keys_sort_by_release_time() -> None:
    early = keys.released_export_id_key("/sm/", "local", 999, 65535)
    late = keys.released_export_id_key("/sm/", "local", 1000, 1)
    assert early.startswith(keys.released_export_ids_prefix("/sm/", "local"))
    assert early < late
    with pytest.raises(Exception, match="export_id"):
        keys.released_export_id_key("/sm/", "local", 1000, 0)
