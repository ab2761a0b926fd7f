"""The metric contract the ops kit is checked against (tests/metric_contract.py) is the daemon's real registry: every
exported family is visible with its labels, and the declarations of families still to come agree with the registry
as soon as the daemon exports them."""

from __future__ import annotations

import re

import pytest

from monitor.domain import Health, LifecycleStage
from tests.metric_contract import (
    EXPORTED,
    LABEL_VALUES,
    METRIC_FAMILIES,
    PENDING_FAMILIES,
    PENDING_LABEL_VALUES,
    daemon_registry,
    exported_families,
    pending_families,
)


def test_every_exported_family_has_help_and_visible_series() -> None:
    """Each family of the daemon's registry says what it counts and, once driven, shows series, so its label names
    are read from the exposition and not assumed."""
    assert len(EXPORTED) >= 20
    for name, family in EXPORTED.items():
        assert re.fullmatch(r"rutter_\w+", name), name
        assert family.help.strip(), f"{name} has no HELP text"
        assert family.series, f"{name} exports no series: pre-create its children"
        if family.type == "counter":
            assert name.endswith("_total"), name


def test_the_contract_is_the_registry_plus_pending_declarations() -> None:
    """The contract holds exactly the exported families with their real type and labels, plus the declared ones the
    registry cannot show yet."""
    exported = {name: (f.type, f.labels) for name, f in EXPORTED.items() if f.series}
    from_registry = {name: (f.type, f.labels) for name, f in METRIC_FAMILIES.items() if name not in pending_families()}
    assert from_registry == exported
    assert set(METRIC_FAMILIES) == set(exported) | pending_families()
    assert exported_families(daemon_registry()).keys() == EXPORTED.keys()


@pytest.mark.parametrize("name", sorted(PENDING_FAMILIES))
def test_a_pending_declaration_matches_the_registry_once_exported(name: str) -> None:
    """A family declared ahead of the daemon has, once exported, the declared type, labels and closed values."""
    declared = PENDING_FAMILIES[name]
    family = EXPORTED.get(name)
    if family is None:
        assert name in pending_families()
        return
    assert family.type == declared.type, name
    if not family.series:
        assert name in pending_families()
        return
    assert name not in pending_families()
    assert family.labels == declared.labels, name
    for (pending, label), values in PENDING_LABEL_VALUES.items():
        if pending == name:
            assert family.values[label] <= values, (name, label)


def test_closed_label_values_come_from_the_pre_created_children() -> None:
    """The closed sets the kit's matchers are checked against are the daemon's StrEnums, as its series show them."""
    stages, healths = {s.value for s in LifecycleStage}, {h.value for h in Health}
    assert LABEL_VALUES[("rutter_connections", "lifecycle_stage")] == stages
    assert LABEL_VALUES[("rutter_connections", "health")] == healths
    assert LABEL_VALUES[("rutter_connection_health_transitions_total", "to_health")] == healths
    assert LABEL_VALUES[("rutter_connection_stage_transitions_total", "to_stage")] == stages - {"initial_sync"}
    assert "unavailable" in LABEL_VALUES[("rutter_webhooks_received_total", "outcome")]
    assert LABEL_VALUES[("rutter_monitor_poll_runs_total", "task")] == {"inventory", "status", "prune"}
