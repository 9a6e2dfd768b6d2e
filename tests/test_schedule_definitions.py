"""Periodic schedules as the code declares them: what is refused, and the fire times a
schedule gives, computed with a fixed clock (time zones and daylight saving changes
included, without waiting for March)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqlalchemy_taskqueue import HandlerRegistry, TaskMixin
from sqlalchemy_taskqueue.scheduling import make_schedule
from sqlalchemy_taskqueue.scheduling._schedule import LATE_GRACE

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"cron": "0 3 * *"}, ValueError, "schedule 'report': cron '0 3 \\* \\*' is not a cron"),
        ({"cron": "61 * * * *"}, ValueError, "Bad minute"),
        ({"cron": "0 3 * * *", "every": "1h"}, ValueError, "exactly one of cron= and every="),
        ({}, ValueError, "exactly one of cron= and every="),
        ({"every": timedelta(0)}, ValueError, "at least one second"),
        ({"every": timedelta(milliseconds=500)}, ValueError, "at least one second"),
        ({"every": "-5s"}, ValueError, "every: invalid duration"),
        ({"every": 60}, TypeError, "every must be a timedelta or a duration"),
        ({"every": "1h", "timezone": "Mars/Olympus"}, ValueError, "not a known IANA time zone"),
        ({"every": "1h", "missed": "some"}, ValueError, "missed must be one of"),
        ({"every": "1h", "catch_up": timedelta(days=30)}, ValueError, "at most 6 days"),
        ({"every": "1h", "payload": {"when": datetime.now()}}, TypeError, "payload is not JSON"),
        ({"every": "1h", "priority": 2**40}, ValueError, "priority"),
        ({"every": "1h", "max_retries": -1}, ValueError, "max_retries"),
        ({"every": "1h", "name": ""}, ValueError, "schedule name must not be empty"),
        ({"every": "1h", "overlap": "yes"}, TypeError, "overlap must be True or False"),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_schedule_and_the_problem(
    arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as raised:
        make_schedule("report", **arguments)
    assert str(raised.value).startswith("schedule ")


def test_the_name_defaults_to_the_task_type_and_the_definition_is_recorded() -> None:
    schedule = make_schedule("purge", every="10m", payload={"older_than": "7d"})
    assert schedule.name == "purge"
    assert schedule.spec == "every 600s"
    assert schedule.definition() == {
        "task_type": "purge",
        "cron": None,
        "every_seconds": 600.0,
        "timezone": "UTC",
        "missed": "latest",
        "catch_up_seconds": 86400.0,
        "overlap": False,
        "payload": {"older_than": "7d"},
        "priority": 0,
        "max_retries": 3,
        "columns": {},
    }


def test_intervals_are_aligned_to_the_epoch_so_every_worker_agrees() -> None:
    schedule = make_schedule("tick", every=timedelta(seconds=7))
    after = datetime(2026, 12, 7, 12, 0, 0, 500_000, tzinfo=UTC)
    fire = schedule.next_fire(after)
    assert fire > after and fire - after <= timedelta(seconds=7)
    assert fire.timestamp() % 7 == 0
    assert schedule.next_fire(fire) == fire + timedelta(seconds=7)


def test_cron_is_read_in_the_schedules_time_zone() -> None:
    schedule = make_schedule("report", cron="0 3 * * *", timezone="Europe/Berlin")
    fire = schedule.next_fire(datetime(2026, 12, 7, 12, 0, tzinfo=UTC))
    assert fire == datetime(2026, 12, 8, 2, 0, tzinfo=UTC)  # 03:00 in Berlin (UTC+1)
    assert fire.astimezone(BERLIN).hour == 3


def test_six_fields_put_seconds_first() -> None:
    schedule = make_schedule("fast", cron="*/15 * * * * *")
    start = datetime(2026, 12, 7, 12, 0, 1, tzinfo=UTC)
    assert schedule.next_fire(start) == datetime(2026, 12, 7, 12, 0, 15, tzinfo=UTC)


def fires_between(schedule_cron: str, start: datetime, end: datetime) -> list[datetime]:
    schedule = make_schedule("daily", cron=schedule_cron, timezone="Europe/Berlin")
    fires, at = [], start
    while (at := schedule.next_fire(at)) < end:
        fires.append(at.astimezone(BERLIN))
    return fires


def test_a_daily_0230_fires_once_on_the_spring_forward_day() -> None:
    # 2027-03-28: Berlin's clocks go from 02:00 to 03:00; 02:30 does not exist
    fires = fires_between(
        "30 2 * * *",
        datetime(2027, 3, 27, 12, 0, tzinfo=BERLIN),
        datetime(2027, 3, 29, 12, 0, tzinfo=BERLIN),
    )
    days = [fire.date().isoformat() for fire in fires]
    assert days == ["2027-03-28", "2027-03-29"]
    assert fires[0].hour == 3  # at the transition, as cron does


def test_a_daily_0230_fires_once_on_the_fall_back_day() -> None:
    # 2027-10-31: Berlin's clocks go from 03:00 back to 02:00; 02:30 happens twice
    fires = fires_between(
        "30 2 * * *",
        datetime(2027, 10, 30, 12, 0, tzinfo=BERLIN),
        datetime(2027, 11, 1, 12, 0, tzinfo=BERLIN),
    )
    assert [fire.date().isoformat() for fire in fires] == ["2027-10-31", "2027-11-01"]


EVERY_10S = {"every": "10s"}
AT = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def seconds(*values: int) -> list[datetime]:
    return [AT + timedelta(seconds=value) for value in values]


@pytest.mark.parametrize("missed", ["latest", "skip", "all"])
def test_a_fire_on_time_is_enqueued_whatever_the_missed_policy(missed: Any) -> None:
    schedule = make_schedule("tick", missed=missed, **EVERY_10S)
    assert schedule.due_fires(AT, AT + timedelta(seconds=9)) == [AT]


def test_nothing_is_due_before_the_next_fire_time() -> None:
    schedule = make_schedule("tick", **EVERY_10S)
    assert schedule.due_fires(AT, AT - timedelta(seconds=1)) == []


HOURLY = {"every": timedelta(hours=1)}


def hours(*values: int) -> list[datetime]:
    return [AT + timedelta(hours=value) for value in values]


@pytest.mark.parametrize(
    ("missed", "expected"),
    [("latest", hours(3)), ("skip", []), ("all", hours(0, 1, 2, 3))],
)
def test_fires_missed_while_no_worker_ran_follow_the_policy(
    missed: Any, expected: list[datetime]
) -> None:
    schedule = make_schedule("tick", missed=missed, **HOURLY)
    assert schedule.due_fires(AT, AT + timedelta(hours=3, minutes=30)) == expected


@pytest.mark.parametrize("missed", ["latest", "skip", "all"])
def test_late_fires_are_each_enqueued_whatever_the_policy(missed: Any) -> None:
    """Workers busy, reconnecting or restarting for under a minute missed nothing."""
    schedule = make_schedule("tick", missed=missed, **EVERY_10S)
    assert timedelta(minutes=1) == LATE_GRACE
    assert schedule.due_fires(AT, AT + timedelta(seconds=35)) == seconds(0, 10, 20, 30)


@pytest.mark.parametrize(
    ("missed", "expected"),
    [("latest", seconds(60, 90)), ("skip", seconds(60, 90)), ("all", seconds(0, 30, 60, 90))],
)
def test_late_fires_stand_for_the_missed_ones_before_them(
    missed: Any, expected: list[datetime]
) -> None:
    schedule = make_schedule("tick", missed=missed, every="30s")
    assert schedule.due_fires(AT, AT + timedelta(seconds=100)) == expected


def test_catching_up_stops_at_the_catch_up_window() -> None:
    schedule = make_schedule(
        "tick", missed="all", catch_up=timedelta(hours=2, minutes=15), **HOURLY
    )
    assert schedule.due_fires(AT, AT + timedelta(hours=3, minutes=30)) == hours(2, 3)


def test_the_previous_fire_is_read_in_the_schedules_time_zone() -> None:
    schedule = make_schedule("report", cron="30 2 * * *", timezone="Europe/Berlin")
    before = datetime(2026, 3, 30, 0, 0, tzinfo=UTC)  # the day after spring-forward
    # 02:30 did not exist that day: it fired at the transition, 03:00 CEST (01:00 UTC),
    # as the forward direction has it
    assert schedule.previous_fire(before) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert schedule.previous_fire(datetime(2026, 1, 10, tzinfo=UTC)) == datetime(
        2026, 1, 9, 1, 30, tzinfo=UTC
    )


def test_a_fires_dedupe_key_names_the_schedule_and_the_fire_time_in_utc() -> None:
    schedule = make_schedule("tick", **EVERY_10S)
    assert schedule.dedupe_key(AT) == "schedule:tick@2026-12-07T12:00:00+00:00"
    assert schedule.dedupe_key(AT.astimezone(BERLIN)) == schedule.dedupe_key(AT)
    assert schedule.dedupe_key(AT) != schedule.dedupe_key(AT + timedelta(seconds=10))


class Base(DeclarativeBase):
    pass


class ProjectTask(TaskMixin, Base):
    __tablename__ = "definition_tasks"
    project_id: Mapped[int | None] = mapped_column(nullable=True)


def test_a_registry_refuses_a_schedule_name_taken_already() -> None:
    tasks: HandlerRegistry[Any] = HandlerRegistry()
    tasks.schedule("report", every="1h")
    with pytest.raises(ValueError, match="schedule 'report': a schedule of that name is already"):
        tasks.schedule("report", cron="0 3 * * *")
    tasks.schedule("report", cron="0 3 * * *", name="nightly")  # another name is fine
    assert [s.name for s in tasks.schedules] == ["nightly", "report"]


def test_a_bad_periodic_declaration_registers_neither_handler_nor_schedule() -> None:
    tasks: HandlerRegistry[Any] = HandlerRegistry()
    with pytest.raises(ValueError, match="schedule 'report': timezone 'Mars/Olympus'"):
        tasks.periodic("report", every="1h", timezone="Mars/Olympus")
    assert list(tasks) == [] and tasks.schedules == []


def test_periodic_registers_the_handler_and_its_schedule() -> None:
    tasks = HandlerRegistry(ProjectTask)

    @tasks.periodic("report", cron="0 3 * * *", timezone="Europe/Berlin", project_id=7)
    def report(task: Any, ctx: Any) -> None: ...

    assert tasks["report"] is report
    [schedule] = tasks.schedules
    assert (schedule.name, schedule.spec, schedule.timezone) == (
        "report",
        "0 3 * * *",
        "Europe/Berlin",
    )
    assert dict(schedule.columns) == {"project_id": 7}
    with pytest.raises(ValueError, match="a handler for 'report' is already registered"):
        tasks.periodic("report", every="1h", name="hourly")(report)


def test_a_schedule_setting_a_column_the_model_lacks_is_refused() -> None:
    tasks = HandlerRegistry(ProjectTask)
    with pytest.raises(TypeError, match="schedule 'report': ProjectTask has no column 'team_id'"):
        tasks.schedule("report", every="1h", team_id=3)
    with pytest.raises(TypeError, match="cannot set the queue-managed column 'status'"):
        tasks.schedule("report", every="1h", status="completed")
    assert tasks.schedules == []
