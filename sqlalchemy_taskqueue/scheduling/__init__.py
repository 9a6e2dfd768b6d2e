"""Periodic tasks: schedules that fire exactly once per fire time, with no leader.

Declare schedules on a :class:`~sqlalchemy_taskqueue.HandlerRegistry` (``periodic`` for a
handler and its schedule, ``schedule`` for a schedule alone); every worker whose registry
carries a schedule may fire it, and each (schedule, fire time) enqueues exactly one task,
whose ``run_at`` is the fire time.  Schedules are rows of a table named after the task
table (``tasks_schedules``): operators list, pause, resume and run them with
``taskqueue schedules`` or the repository's :meth:`~sqlalchemy_taskqueue.TaskRepository.schedules`
methods, without the handlers' code.

Example::

    from datetime import timedelta
    from sqlalchemy_taskqueue import HandlerRegistry

    tasks = HandlerRegistry(Task)

    @tasks.periodic("nightly_report", cron="0 3 * * *", timezone="Europe/Berlin")
    def nightly(task, ctx): ...

    tasks.schedule("purge", every=timedelta(minutes=10), payload={"older_than": "7d"})

Cron expressions need the ``periodic`` extra (``cronsim``).  ``DEFAULT_CATCH_UP`` (one
day) is how far back ``missed="all"`` catches up unless told otherwise;
``Missed`` is the type of the ``missed`` policy (``"latest"``, ``"skip"`` or ``"all"``);
``ORPHANED_AFTER`` is how long a schedule no running worker carries is shown as
orphaned rather than carried.
"""

from __future__ import annotations

from ._schedule import DEFAULT_CATCH_UP, Missed, Schedule, make_schedule
from ._state import ORPHANED_AFTER, ScheduleState

__all__ = [
    "DEFAULT_CATCH_UP",
    "ORPHANED_AFTER",
    "Missed",
    "Schedule",
    "ScheduleState",
    "make_schedule",
]
