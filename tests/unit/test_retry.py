"""The backoff and deadline of retries that heal (pure logic)."""

from __future__ import annotations

import time

from sharemesh.runtime import retry


def test_backoff_doubles_from_a_fifth_of_a_second_to_five_with_jitter() -> None:
    backoff = retry.Backoff()
    delays = [backoff.next_delay() for _ in range(10)]
    for delay, nominal in zip(delays, [0.2, 0.4, 0.8, 1.6, 3.2, 5, 5, 5, 5, 5], strict=True):
        assert 0.75 * nominal <= delay <= 1.25 * nominal


def test_the_deadline_counts_from_when_the_oldest_operation_was_made() -> None:
    now = time.time()
    assert not retry.past_deadline(None, 0)  # nothing waits: nothing to fail
    assert not retry.past_deadline(now - 5, 600)
    assert retry.past_deadline(now - 601, 600)
