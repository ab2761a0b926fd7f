"""Loading the fleet at start-up with the cyclic garbage collector out of the way: paused while the states are
built, restored after (an error included), and the loaded states left out of its generations."""

from __future__ import annotations

import gc
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from monitor.domain import ConnectionState
from monitor.fleet import Fleet, bulk_load
from tests.states import connection_state

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def state(cid: str) -> ConnectionState:
    return connection_state(cid, T0)


def test_the_collector_is_paused_during_a_bulk_load_and_on_again_after() -> None:
    """No cyclic collection can start while the fleet loads; the collector is enabled again afterwards."""
    assert gc.isenabled()
    with bulk_load():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_failed_load_still_turns_the_collector_back_on() -> None:
    """A store error in the middle of a load leaves the collector enabled."""
    with pytest.raises(RuntimeError, match="store down"), bulk_load():
        raise RuntimeError("store down")
    assert gc.isenabled()


def test_a_collector_switched_off_before_stays_off() -> None:
    """bulk_load restores the collector's previous setting rather than forcing it on."""
    gc.disable()
    try:
        with bulk_load():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_loaded_states_leave_the_collectors_generations() -> None:
    """States put into the fleet during a bulk load are frozen: full collections no longer walk them."""
    fleet = Fleet()
    with bulk_load():
        for n in range(100):
            fleet.put(state(f"c{n}"))
    loaded = fleet.get("c42")
    assert loaded is not None
    assert not any(obj is loaded for obj in gc.get_objects())


def test_live_ids_is_a_snapshot_the_collector_stops_tracking() -> None:
    """The status tick scans a tuple of ids: deleted connections left out, later puts not seen, and after one young
    collection the collector no longer walks it (a list of 100,000 states it walked in every collection)."""
    fleet = Fleet()
    for n in range(3):
        fleet.put(state(f"c{n}"))
    fleet.put(replace(state("c1"), deleted_at=T0))
    ids = fleet.live_ids()
    fleet.put(state("c3"))
    assert ids == ("c0", "c2")
    gc.collect(0)
    assert not gc.is_tracked(ids)
