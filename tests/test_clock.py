"""The status says whether the clock is synchronised (inside the sandboxed unit: ci/boot-smoke.sh step 7)."""

from __future__ import annotations

from edge.device import clock
from edge.device.clock import ClockSync


def test_clock_state_is_one_of_three_and_matches_the_kernel() -> None:
    state = clock.clock_sync()
    assert isinstance(state, ClockSync)
    kernel = clock._adjtimex()
    if kernel is not ClockSync.UNKNOWN:  # where adjtimex answers, it is the answer
        assert state is kernel


def test_cached_state_is_stable_between_heartbeats() -> None:
    assert clock.clock_sync_cached() is clock.clock_sync_cached()
