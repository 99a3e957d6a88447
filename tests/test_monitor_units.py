"""Unit states: every change the monitor makes is a checked transition."""

from __future__ import annotations

import pytest

from lazymem.monitor.units import ABSENT, FAILED, PENDING, PRESENT, IllegalTransition, UnitStates


def test_a_unit_goes_through_its_life() -> None:
    units = UnitStates(4)
    assert [units[u] for u in range(4)] == [ABSENT] * 4
    units.load(0)
    assert units[0] is PENDING
    units.installed(0)
    assert units[0] is PRESENT
    units.evicted(0)
    units.load(0)
    units.failed(0)
    assert units[0] is FAILED
    units.load(0)  # a prefetch or a later touch tries a failed unit again
    units.abandoned(0)  # and gives up without poisoning
    assert units[0] is ABSENT
    units.found(1)  # a new monitor found it whole in the memfd
    units.lost(1)  # a held-back page could not go in
    units.load(2)
    units.installed(2)
    units.load(2)  # present in the books but a page is missing: load it again
    assert units[2] is PENDING
    units.load(3)
    units.failed(3)
    units.evicted(3)  # an evict drops poison too
    assert units[3] is ABSENT


@pytest.mark.parametrize(
    ("prepare", "illegal"),
    [
        ([], "installed"),  # installing a unit nobody was loading
        ([], "failed"),
        ([], "abandoned"),
        ([], "evicted"),  # evicting what is not there
        ([], "lost"),
        (["load"], "load"),  # two jobs for one unit
        (["load"], "evicted"),  # punching a unit being written
        (["load"], "found"),
        (["load", "installed"], "installed"),
        (["load", "installed"], "failed"),  # a failure after the unit was booked present
        (["load", "installed"], "found"),
        (["load", "failed"], "installed"),
        (["load", "failed"], "lost"),
    ],
)
def test_an_illegal_transition_raises_and_changes_nothing(prepare: list[str], illegal: str) -> None:
    units = UnitStates(1)
    for move in prepare:
        getattr(units, move)(0)
    before = units[0]
    with pytest.raises(IllegalTransition, match="unit 0"):
        getattr(units, illegal)(0)
    assert units[0] is before


def test_loaded_finds_present_and_failed_units_and_count_counts() -> None:
    units = UnitStates(10)
    for u in (1, 4, 7):
        units.load(u)
        units.installed(u)
    units.load(5)
    units.failed(5)
    units.load(8)  # pending: not loaded yet, an evict must leave it alone
    assert units.loaded() == [1, 4, 5, 7]
    assert (units.count(PRESENT), units.count(FAILED), units.count(PENDING), units.count(ABSENT)) == (3, 1, 1, 5)
    assert len(units) == 10
