"""A periodic schedule as the code declares it, checked, and the fire times it gives.

A :class:`Schedule` is immutable and knows nothing of the database: given an instant it
says which fire time comes next, and given the fire time a worker last recorded and the
database clock, which fire times are due under its ``missed`` policy.  Times are aware
datetimes; cron expressions are read in the schedule's time zone by ``cronsim`` (which
follows Debian cron on daylight saving changes: a 02:30 schedule fires once on a
spring-forward day, at the transition, and once on a fall-back day); intervals are
aligned to the Unix epoch, so every worker and every restart agrees on them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy_taskqueue._validation import (
    INT4_MAX,
    INT4_MIN,
    require_int,
    require_json,
    require_max_retries,
    require_schedule_name,
    require_task_type,
    task_type_name,
)
from sqlalchemy_taskqueue.durations import parse_duration
from sqlalchemy_taskqueue.exceptions import optional_dependency

__all__ = ["DEFAULT_CATCH_UP", "Missed", "Schedule", "make_schedule"]

#: What a schedule does with fire times that passed while no worker carrying it ran.
Missed = Literal["latest", "skip", "all"]

#: How far back ``missed="all"`` catches up by default.
DEFAULT_CATCH_UP = timedelta(days=1)
#: The longest ``catch_up``: a task's ``run_at`` may lie at most a week in the past.
MAX_CATCH_UP = timedelta(days=6)
#: How many missed fires ``missed="all"`` enqueues at most in one go.
MAX_CATCH_UP_FIRES = 10_000
#: A fire enqueued less than this after its time is late, not missed: it is enqueued
#: whatever the ``missed`` policy says.
LATE_GRACE = timedelta(minutes=1)
#: The shortest interval an ``every`` schedule may have.
MIN_INTERVAL = timedelta(seconds=1)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Schedule:
    """A checked periodic schedule: fire ``task_type`` on ``cron`` or ``every``.

    Build one with :func:`make_schedule` (which checks every argument); a registry's
    ``periodic``/``schedule`` does so.

    Example::

        schedule = make_schedule("report", cron="0 3 * * *", timezone="Europe/Berlin")
        schedule.next_fire(datetime.now(timezone.utc))
    """

    name: str
    task_type: str
    cron: str | None
    every: timedelta | None
    timezone: str
    missed: Missed
    catch_up: timedelta
    payload: Any
    priority: int
    max_retries: int
    overlap: bool
    columns: Mapping[str, Any] = field(default_factory=dict)

    @property
    def zone(self) -> ZoneInfo:
        """The schedule's time zone.

        Example::

            make_schedule("t", every="1h").zone  # zoneinfo.ZoneInfo(key='UTC')
        """
        return ZoneInfo(self.timezone)

    @property
    def spec(self) -> str:
        """The cron expression, or the interval as ``every <seconds>s``.

        Example::

            make_schedule("t", every="90s").spec  # 'every 90s'
        """
        if self.cron is not None:
            return self.cron
        assert self.every is not None
        return f"every {_seconds_text(self.every)}"

    def next_fire(self, after: datetime) -> datetime:
        """The first fire time strictly after ``after`` (an aware datetime), in UTC.

        >>> s = make_schedule("t", every=timedelta(minutes=10))
        >>> s.next_fire(datetime(2026, 1, 1, 12, 5, tzinfo=timezone.utc))
        datetime.datetime(2026, 1, 1, 12, 10, tzinfo=datetime.timezone.utc)
        """
        return self._neighbour(after, forward=True)

    def previous_fire(self, before: datetime) -> datetime:
        """The last fire time strictly before ``before`` (an aware datetime), in UTC.

        >>> s = make_schedule("t", every=timedelta(minutes=10))
        >>> s.previous_fire(datetime(2026, 1, 1, 12, 10, tzinfo=timezone.utc))
        datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.timezone.utc)
        """
        return self._neighbour(before, forward=False)

    def _neighbour(self, moment: datetime, *, forward: bool) -> datetime:
        """The fire time next to ``moment`` (strictly after it, or strictly before)."""
        if self.every is not None:
            step = self.every / timedelta(microseconds=1)
            elapsed = (moment - _EPOCH) / timedelta(microseconds=1)
            count = math.floor(elapsed / step) + 1 if forward else math.ceil(elapsed / step) - 1
            return _EPOCH + timedelta(microseconds=count * step)
        from cronsim import CronSim

        assert self.cron is not None
        local = moment.astimezone(self.zone)
        fire: datetime = next(CronSim(self.cron, local, reverse=not forward))
        return fire.astimezone(timezone.utc)

    def due_fires(self, next_fire_at: datetime, now: datetime) -> list[datetime]:
        """The fire times to enqueue now, given the fire time recorded as next
        (``next_fire_at``, due when not after ``now``) and the database clock.

        A fire less than :data:`LATE_GRACE` old is late, not missed (the workers were
        busy, reconnecting or restarting): it is enqueued whatever the policy.  Older
        ones were missed while no worker ran, and the ``missed`` policy decides:
        ``"latest"`` enqueues the last one alone (none when a late fire stands for
        them), ``"skip"`` none, ``"all"`` each one within ``catch_up`` of ``now``.

        >>> s = make_schedule("t", every="1h", missed="latest")
        >>> at = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
        >>> s.due_fires(at, at + timedelta(seconds=5))  # on time
        [datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.timezone.utc)]
        >>> s.due_fires(at, at + timedelta(hours=2, minutes=30))  # three missed: the latest
        [datetime.datetime(2026, 1, 1, 14, 0, tzinfo=datetime.timezone.utc)]
        """
        if next_fire_at > now:
            return []
        late_from = now - LATE_GRACE
        first_late = next_fire_at if next_fire_at >= late_from else self._first_from(late_from)
        late = self._fires_between(first_late, now, inclusive=True)
        if next_fire_at >= late_from:
            return late  # nothing was missed
        if self.missed == "skip":
            return late
        if self.missed == "latest":
            return late or [self.previous_fire(late_from)]
        oldest = max(next_fire_at, now - self.catch_up)
        if oldest >= late_from:
            return late
        return self._fires_between(self._first_from(oldest), late_from) + late

    def _first_from(self, moment: datetime) -> datetime:
        """The first fire time at or after ``moment``."""
        return self.next_fire(moment - timedelta(microseconds=1))

    def _fires_between(
        self, first: datetime, end: datetime, *, inclusive: bool = False
    ) -> list[datetime]:
        """Fire times from ``first`` (a fire time) up to ``end``: the newest
        :data:`MAX_CATCH_UP_FIRES` of them when there are more (walked back from ``end``,
        so the work is bounded however far back ``first`` lies)."""
        newest: list[datetime] = []
        fire = end + timedelta(microseconds=1) if inclusive else end
        while len(newest) < MAX_CATCH_UP_FIRES:
            fire = self.previous_fire(fire)
            if fire < first:
                break
            newest.append(fire)
        return newest[::-1]

    def definition(self) -> dict[str, Any]:
        """What a schedule's row records of the code's declaration (for operators, who
        list and run schedules without the code).

        Example::

            make_schedule("t", every="1m").definition()["every_seconds"]  # 60.0
        """
        return {
            "task_type": self.task_type,
            "cron": self.cron,
            "every_seconds": None if self.every is None else self.every.total_seconds(),
            "timezone": self.timezone,
            "missed": self.missed,
            "catch_up_seconds": self.catch_up.total_seconds(),
            "overlap": self.overlap,
            "payload": self.payload,
            "priority": self.priority,
            "max_retries": self.max_retries,
            "columns": dict(self.columns),
        }

    def dedupe_key(self, fire: datetime) -> str:
        """The dedupe key of the task a fire enqueues: the schedule's name and the fire
        time (in UTC), so a task tells which fire enqueued it even after retries moved
        its ``run_at``, and no fire is enqueued twice while its task is active.

        >>> make_schedule("t", every="1m").dedupe_key(datetime(2026, 1, 1, tzinfo=timezone.utc))
        'schedule:t@2026-01-01T00:00:00+00:00'
        """
        return f"schedule:{self.name}@{fire.astimezone(timezone.utc).isoformat()}"


def make_schedule(
    task_type: str,
    *,
    cron: str | None = None,
    every: timedelta | str | None = None,
    name: str | None = None,
    payload: Any = None,
    timezone: str = "UTC",
    missed: Missed = "latest",
    catch_up: timedelta = DEFAULT_CATCH_UP,
    priority: int = 0,
    max_retries: int = 3,
    overlap: bool = False,
    columns: Mapping[str, Any] | None = None,
) -> Schedule:
    """A :class:`Schedule`, every argument checked; ``ValueError`` or ``TypeError``
    naming the schedule and the problem otherwise.

    Exactly one of ``cron`` (five fields, or six with seconds first) and ``every`` (a
    ``timedelta`` of at least a second, or a duration such as ``"10m"``).

    >>> make_schedule("report", cron="0 3 * * *").spec
    '0 3 * * *'
    >>> make_schedule("report", cron="0 3 * *")
    Traceback (most recent call last):
    ...
    ValueError: schedule 'report': cron '0 3 * *' is not a cron expression (Wrong number of fields); use five fields, or six with seconds first
    """
    shown = name if name is not None else task_type
    label = f"schedule {str(shown)!r}" if isinstance(shown, str) else "schedule"
    try:
        require_task_type(task_type, new=True)
        if name is None:
            name = task_type_name(task_type)
        require_schedule_name(name)
        zone = _require_zone(timezone)
        interval = _require_every(every) if every is not None else None
        if (cron is None) == (interval is None):
            raise ValueError("give exactly one of cron= and every=")
        if cron is not None:
            cron = _require_cron(cron, zone)
        if missed not in get_args(Missed):
            raise ValueError(f"missed must be one of 'latest', 'skip', 'all', got {missed!r}")
        if not isinstance(catch_up, timedelta) or catch_up <= timedelta(0):
            raise ValueError(f"catch_up must be a positive timedelta, got {catch_up!r}")
        if catch_up > MAX_CATCH_UP:
            raise ValueError(
                f"catch_up must be at most {MAX_CATCH_UP.days} days (tasks cannot be "
                f"enqueued further in the past), got {catch_up}"
            )
        payload = {} if payload is None else payload
        require_json("payload", payload, allow_none=False)
        require_int("priority", priority, minimum=INT4_MIN, maximum=INT4_MAX)
        require_max_retries(max_retries)
        if not isinstance(overlap, bool):
            raise TypeError(f"overlap must be True or False, got {overlap!r}")
        extra = dict(columns or {})
        require_json("columns", extra, allow_none=False)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{label}: {exc}") from None
    return Schedule(
        name=name,
        task_type=task_type_name(task_type),
        cron=cron,
        every=interval,
        timezone=zone.key,
        missed=missed,
        catch_up=catch_up,
        payload=json.loads(json.dumps(payload)),  # as it will read back from the row
        priority=priority,
        max_retries=max_retries,
        overlap=overlap,
        columns=extra,
    )


def _require_zone(name: object) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise TypeError(f"timezone must be an IANA time zone name, got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone {name!r} is not a known IANA time zone") from None


def _require_every(every: object) -> timedelta:
    if isinstance(every, str):
        try:
            every = parse_duration(every)
        except ValueError as exc:
            raise ValueError(f"every: {exc}") from None
    if not isinstance(every, timedelta):
        raise TypeError(f"every must be a timedelta or a duration such as '10m', got {every!r}")
    if every < MIN_INTERVAL:
        raise ValueError(f"every must be at least one second, got {_seconds_text(every)}")
    return every


def _require_cron(expression: object, zone: ZoneInfo) -> str:
    if not isinstance(expression, str):
        raise TypeError(f"cron must be a string such as '0 3 * * *', got {expression!r}")
    with optional_dependency("periodic", "cronsim", feature="a cron schedule"):
        from cronsim import CronSim, CronSimError
    cleaned = " ".join(expression.split())
    try:
        next(CronSim(cleaned, datetime.now(zone)))
    except (CronSimError, StopIteration, ValueError) as exc:
        reason = str(exc) or "it never fires"
        raise ValueError(
            f"cron {expression!r} is not a cron expression ({reason}); "
            "use five fields, or six with seconds first"
        ) from None
    return cleaned


def _seconds_text(interval: timedelta) -> str:
    seconds = interval.total_seconds()
    return f"{seconds:g}s"


def schedule_columns(schedule: Schedule) -> dict[str, Any]:
    """The task columns a fire of ``schedule`` sets besides payload and run time.

    Example::

        repo.enqueue(schedule.task_type, schedule.payload, **schedule_columns(schedule))
    """
    return {
        "priority": schedule.priority,
        "max_retries": schedule.max_retries,
        **schedule.columns,
    }
