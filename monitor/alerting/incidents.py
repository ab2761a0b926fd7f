"""The incident engine's functional core: (open incidents and storms, rule conditions, now, settings) ->
(changed incidents and storms, notices to send). No I/O and no clock reads; the shell (monitor.alerting.engine)
evaluates the rules, calls `decide`, persists the decision with its outbox rows in one transaction, then applies it
to its `Book`.

What it guarantees:
- one incident per (connection, alert) while open; a duplicate observation changes nothing and says nothing;
- criticals are announced at once; warnings wait `group_wait`, so a storm is recognised before its members go out;
- hold-down: an incident resolves only after its condition stayed clear for `hold_down`; if the condition
  returns before, the same incident continues and nothing is sent;
- storms: when `storm_threshold` incidents of one (platform, alert) were detected within `storm_window`, one
  roll-up replaces their messages not yet sent; later incidents of that platform and alert join it while it is
  open; it is updated as it grows (`doubled` at threshold x 2, x 4, ...) and resolved when its last member is."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from monitor.alerting.messages import MAX_EXAMPLES
from monitor.alerting.model import Incident, Notice, NoticeKind, Phase, Storm, reasons_of
from monitor.alerting.rules import SEVERITY, AlertName, Condition, Severity
from monitor.domain import ConnectionState

Group = tuple[str, AlertName]  # (platform, alert): the unit of storms
KeyFactory = Callable[[str], str]  # prefix ("incident" or "storm") -> a new unique key


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """MONITOR_RESOLVE_HOLD_DOWN, MONITOR_GROUP_WAIT, MONITOR_STORM_THRESHOLD and MONITOR_STORM_WINDOW."""

    hold_down: timedelta = timedelta(minutes=2)
    group_wait: timedelta = timedelta(seconds=30)
    storm_threshold: int = 10
    storm_window: timedelta = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Observation:
    """A connection's state and the conditions its rules found at `now`."""

    state: ConnectionState
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """What changed: incidents and storms as they are now (resolved ones included), notices in send order, and
    the incidents whose messages not yet attempted are withdrawn (rolled into a storm)."""

    incidents: tuple[Incident, ...] = ()
    storms: tuple[Storm, ...] = ()
    notices: tuple[Notice, ...] = ()
    withdrawn: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.incidents or self.storms or self.notices or self.withdrawn)


class Book:
    """The open incidents and storms, indexed the ways the engine looks them up. The shell owns it and applies
    each persisted decision; `decide` only reads it."""

    def __init__(self, incidents: Iterable[Incident] = (), storms: Iterable[Storm] = ()) -> None:
        self.incidents: dict[str, Incident] = {}
        self.by_connection: dict[str, dict[AlertName, str]] = {}
        self.by_group: dict[Group, set[str]] = {}
        self.storms: dict[Group, Storm] = {}
        self.apply(Decision(incidents=tuple(incidents), storms=tuple(storms)))

    def apply(self, decision: Decision) -> None:
        """Take in a decision that was persisted."""
        for incident in decision.incidents:
            old = self.incidents.pop(incident.key, None)
            if old is not None:
                self.by_connection.get(old.connection_id, {}).pop(old.alert, None)
                if not self.by_connection.get(old.connection_id, True):
                    del self.by_connection[old.connection_id]
                self.by_group.get((old.platform, old.alert), set()).discard(old.key)
            if incident.open:
                self.incidents[incident.key] = incident
                self.by_connection.setdefault(incident.connection_id, {})[incident.alert] = incident.key
                self.by_group.setdefault((incident.platform, incident.alert), set()).add(incident.key)
        for storm in decision.storms:
            group = (storm.platform, storm.alert)
            if storm.open:
                self.storms[group] = storm
            elif group in self.storms and self.storms[group].key == storm.key:
                del self.storms[group]

    def mark_attempted(self, key: str) -> None:
        """The outbox handed this incident's firing message to Slack: a storm can no longer withdraw it."""
        incident = self.incidents.get(key)
        if incident is not None and not incident.attempted:
            self.incidents[key] = replace(incident, attempted=True)


def decide(
    book: Book,
    observations: Sequence[Observation],
    now: datetime,
    settings: EngineSettings,
    *,
    new_key: KeyFactory,
    scan: bool = True,
) -> Decision:
    """Decide incident transitions and notices. `scan` also runs the timers (group wait, hold-down) and storm
    checks of every open incident, not only of the observed ones: the periodic evaluation does that."""
    work = _Work(book, now, settings, new_key)
    for observation in observations:
        work.observe(observation)
    groups = set(book.by_group) | work.groups if scan else work.groups
    for group in sorted(groups):
        work.storm(group)
    keys = set(book.incidents) | work.touched if scan else work.touched
    for key in sorted(keys, key=lambda k: (work.incident(k).detected_at, k)):
        work.timers(key)
    return work.decision()


def notify_at(incident: Incident, settings: EngineSettings) -> datetime:
    """When a pending incident is announced if no storm takes it: at once for criticals, after the group wait."""
    if incident.severity is Severity.CRITICAL:
        return incident.detected_at
    return incident.detected_at + settings.group_wait


def doubling_level(count: int, threshold: int) -> int:
    """The largest threshold x 2^k not above `count` (10, 20, 40, ... for a threshold of 10)."""
    level = threshold
    while level * 2 <= count:
        level *= 2
    return level


class _Work:
    """The decision being built: an overlay of changed incidents and storms over the book."""

    def __init__(self, book: Book, now: datetime, settings: EngineSettings, new_key: KeyFactory) -> None:
        self.book = book
        self.now = now
        self.settings = settings
        self.new_key = new_key
        self.changed: dict[str, Incident] = {}
        self.storms: dict[str, Storm] = {}  # by key
        self.open_storms: dict[Group, Storm] = {}  # storms opened or changed in this decision
        self.notices: list[Notice] = []
        self.withdrawn: list[str] = []
        self.touched: set[str] = set()
        self.groups: set[Group] = set()
        self.new_in_group: dict[Group, set[str]] = {}

    # -- reading through the overlay ----------------------------------------------------------------------------

    def incident(self, key: str) -> Incident:
        found = self.changed.get(key)
        return found if found is not None else self.book.incidents[key]

    def put(self, incident: Incident) -> None:
        self.changed[incident.key] = incident
        self.touched.add(incident.key)

    def storm_of(self, group: Group) -> Storm | None:
        storm = self.open_storms.get(group) or self.book.storms.get(group)
        if storm is not None:
            storm = self.storms.get(storm.key, storm)
        return storm if storm is not None and storm.open else None

    def storm_by_key(self, key: str) -> Storm | None:
        """An open storm by key (an incident's platform may have become known after it joined)."""
        storm = self.storms.get(key) or next((s for s in self.book.storms.values() if s.key == key), None)
        return storm if storm is not None and storm.open else None

    def put_storm(self, storm: Storm) -> None:
        self.storms[storm.key] = storm
        self.open_storms[(storm.platform, storm.alert)] = storm

    def group_keys(self, group: Group) -> list[str]:
        keys = self.book.by_group.get(group, set()) | self.new_in_group.get(group, set())
        return sorted(keys, key=lambda k: (self.incident(k).detected_at, k))

    # -- steps ---------------------------------------------------------------------------------------------------

    def observe(self, observation: Observation) -> None:
        """Open, continue or clear the incidents of one connection."""
        state = observation.state
        held = {c.alert: c for c in observation.conditions}
        for alert, key in sorted(self.book.by_connection.get(state.id, {}).items()):
            incident = self.incident(key)
            condition = held.pop(alert, None)
            if condition is None:
                updated = _refresh(incident, state, incident.reason)
                if updated.cleared_at is None:
                    updated = replace(updated, cleared_at=self.now)
            else:
                updated = replace(_refresh(incident, state, condition.reason or incident.reason), cleared_at=None)
                if updated.reason != incident.reason and updated.storm_key is not None:
                    self._move_reason(updated, incident.reason)
                if updated.announced and updated.reason and updated.reason != updated.announced_reason:
                    updated = replace(updated, announced_reason=updated.reason)
                    self.notices.append(Notice(NoticeKind.FOLLOWUP, self.now, incident=updated))
            if updated != incident:
                self.put(updated)
            self.groups.add((updated.platform, updated.alert))
        for condition in held.values():
            self._open(state, condition)

    def _open(self, state: ConnectionState, condition: Condition) -> None:
        incident = _refresh(
            Incident(
                key=self.new_key("incident"),
                connection_id=state.id,
                platform=state.platform,
                alert=condition.alert,
                severity=condition.severity,
                phase=Phase.PENDING,
                since=condition.since,
                detected_at=self.now,
                stage=state.lifecycle_stage,
                health=state.health,
            ),
            state,
            condition.reason,
        )
        self.put(incident)
        group = (incident.platform, incident.alert)
        self.groups.add(group)
        self.new_in_group.setdefault(group, set()).add(incident.key)

    def storm(self, group: Group) -> None:
        """Open a storm when the threshold is reached; let new incidents of the group join an open one."""
        storm = self.storm_of(group)
        if storm is None:
            start = self.now - self.settings.storm_window
            candidates = [
                inc
                for inc in map(self.incident, self.group_keys(group))
                if inc.holding and inc.storm_key is None and inc.detected_at >= start
            ]
            if len(candidates) < self.settings.storm_threshold:
                return
            storm = Storm(
                key=self.new_key("storm"),
                platform=group[0],
                alert=group[1],
                severity=SEVERITY[group[1]],
                since=min(inc.detected_at for inc in candidates),
                count=0,
                open_count=0,
                level=doubling_level(len(candidates), self.settings.storm_threshold),
            )
            storm = self._join(storm, candidates)
            self.put_storm(storm)
            self.notices.append(Notice(NoticeKind.STORM_FIRING, self.now, storm=storm))
            return
        joining = [
            inc
            for inc in map(self.incident, self.group_keys(group))
            if inc.holding and inc.storm_key is None and inc.phase is Phase.PENDING
        ]
        if not joining:
            return
        storm = self._join(storm, joining)
        doubled = storm.count >= 2 * storm.level
        if doubled:
            storm = replace(storm, level=doubling_level(storm.count, self.settings.storm_threshold))
        self.put_storm(storm)
        self.notices.append(Notice(NoticeKind.STORM_UPDATED, self.now, storm=storm, doubled=doubled))

    def _join(self, storm: Storm, members: Sequence[Incident]) -> Storm:
        reasons = Counter(dict(storm.reasons))
        examples = list(storm.examples)
        for inc in members:
            if inc.phase is Phase.PENDING:
                self.put(replace(inc, storm_key=storm.key, phase=Phase.FIRING))  # announced by the roll-up
            elif inc.announced and not inc.attempted:
                self.put(replace(inc, storm_key=storm.key, announced=False))  # its message never left
                self.withdrawn.append(inc.key)
            else:
                self.put(replace(inc, storm_key=storm.key))  # announced already: it keeps its own messages
            reasons[inc.reason] += 1
            if len(examples) < MAX_EXAMPLES:
                examples.append(inc.connection_id)
        return replace(
            storm,
            count=storm.count + len(members),
            open_count=storm.open_count + len(members),
            examples=tuple(examples),
            reasons=reasons_of(reasons),
        )

    def _move_reason(self, incident: Incident, old_reason: str) -> None:
        storm = self.storm_by_key(incident.storm_key) if incident.storm_key else None
        if storm is None:
            return
        reasons = Counter(dict(storm.reasons))
        reasons[old_reason] -= 1
        reasons[incident.reason] += 1
        storm = replace(storm, reasons=reasons_of(reasons))
        self.put_storm(storm)
        self.notices.append(Notice(NoticeKind.STORM_UPDATED, self.now, storm=storm))

    def timers(self, key: str) -> None:
        """Announce a pending incident whose wait is over; resolve one whose hold-down is over."""
        incident = self.incident(key)
        if not incident.open:
            return
        if incident.cleared_at is not None:
            if self.now >= incident.cleared_at + self.settings.hold_down:
                self._resolve(incident, incident.cleared_at)
            return
        if incident.phase is Phase.PENDING and self.now >= notify_at(incident, self.settings):
            announced = replace(incident, phase=Phase.FIRING, announced=True, announced_reason=incident.reason)
            self.put(announced)
            self.notices.append(Notice(NoticeKind.FIRING, incident.detected_at, incident=announced))

    def _resolve(self, incident: Incident, cleared_at: datetime) -> None:
        resolved = replace(incident, phase=Phase.RESOLVED, resolved_at=max(cleared_at, incident.since))
        self.put(resolved)
        if incident.announced:
            self.notices.append(Notice(NoticeKind.RESOLVED, cleared_at, incident=resolved))
        storm = self.storm_by_key(incident.storm_key) if incident.storm_key else None
        if storm is None:
            return
        last = max(cleared_at, storm.last_cleared_at or cleared_at)
        storm = replace(storm, open_count=storm.open_count - 1, last_cleared_at=last)
        if storm.open_count <= 0:
            storm = replace(storm, open_count=0, resolved_at=max(last, storm.since))
            self.notices.append(Notice(NoticeKind.STORM_RESOLVED, last, storm=storm))
        self.put_storm(storm)

    def decision(self) -> Decision:
        withdrawn = set(self.withdrawn)
        notices = [n for n in self.notices if n.incident is None or n.incident.key not in withdrawn]
        return Decision(
            incidents=tuple(self.changed.values()),
            storms=tuple(self.storms.values()),
            notices=tuple(notices),
            withdrawn=tuple(self.withdrawn),
        )


def _refresh(incident: Incident, state: ConnectionState, reason: str) -> Incident:
    """The incident with the connection's current names, links, stage and health."""
    return replace(
        incident,
        platform=state.platform,
        stage=state.lifecycle_stage,
        health=state.health,
        reason=reason,
        store_name=state.store_name,
        name=state.name,
        link_url=state.link_url,
    )


def firing_counts(incidents: Iterable[Incident]) -> Mapping[tuple[AlertName, Severity, str], int]:
    """Firing incidents by (alert, severity, platform), for the scrape-time gauge."""
    counts: Counter[tuple[AlertName, Severity, str]] = Counter()
    for incident in incidents:
        if incident.phase is Phase.FIRING:
            counts[(incident.alert, incident.severity, incident.platform)] += 1
    return counts
