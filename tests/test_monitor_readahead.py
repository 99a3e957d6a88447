"""The readahead window, as a policy alone: no monitor, no region, no I/O."""

from __future__ import annotations

from lazymem.monitor.readahead import Readahead


def window_after(policy: Readahead, *faults: int) -> set[int]:
    """Every unit the policy asked for over ``faults``."""
    asked: set[int] = set()
    for unit in faults:
        asked.update(policy.on_fault(unit))
    return asked


def test_a_sequential_reader_doubles_the_window_up_to_its_maximum() -> None:
    policy = Readahead(max_units=8, units=100)
    assert list(policy.on_fault(0)) == []  # one fault says nothing yet
    assert list(policy.on_fault(1)) == [2, 3]
    assert list(policy.on_fault(4)) == [5, 6, 7, 8]  # right after the window: the reader went through it
    assert list(policy.on_fault(9)) == list(range(10, 18))
    assert list(policy.on_fault(18)) == list(range(19, 27))  # at most 8
    assert policy.window == 8


def test_the_window_survives_a_second_fault_on_the_same_unit() -> None:
    # A demand install wakes its reader after the first piece, so one reader may fault twice on
    # one unit: that must not read as random access (it used to take a whole Monitor to check).
    policy = Readahead(max_units=8, units=64)
    assert window_after(policy, 0, 1, 4, 4, 9) == {2, 3} | set(range(5, 9)) | set(range(10, 18))
    assert policy.window == 8


def test_a_jump_is_random_access_and_drops_the_window() -> None:
    policy = Readahead(max_units=8, units=64)
    window_after(policy, 0, 1, 4)
    assert list(policy.on_fault(40)) == [] and policy.window == 0
    assert list(policy.on_fault(41)) == [42, 43]  # sequential again: it grows from scratch


def test_a_fault_inside_the_window_keeps_it_without_asking_for_more() -> None:
    policy = Readahead(max_units=8, units=64)
    window_after(policy, 0, 1, 4)  # the window covers 5..8
    assert policy.window == 4
    assert list(policy.on_fault(6)) == [7, 8, 9, 10]  # a sparse reader skipping units inside it
    assert policy.window == 4


def test_a_tripwire_fault_counts_as_sequential_even_on_the_unit_just_seen() -> None:
    policy = Readahead(max_units=16, units=64)
    window_after(policy, 0, 1)
    assert list(policy.on_fault(1, sequential=True)) == [2, 3, 4, 5]


def test_the_window_stops_at_the_end_of_the_region_and_zero_means_off() -> None:
    policy = Readahead(max_units=8, units=6)
    assert window_after(policy, 0, 1, 4) == {2, 3, 5}
    assert list(policy.on_fault(5)) == []
    off = Readahead(max_units=0, units=64)
    assert window_after(off, 0, 1, 2, 3) == set()
    assert off.last_fault == -2  # no readahead: faults are not even followed
