"""The PostgreSQL statements of per-key concurrency (see :mod:`sqlalchemy_taskqueue._concurrency`).

A claim takes key slots in the statement that claims the tasks
(:func:`keyed_claim_ids`); the statements that move tasks out of ``in_progress`` free
their slots in the same statement (:func:`freeing_slots`).  Slot rows are locked with
``FOR UPDATE SKIP LOCKED`` by claims only; a slot is freed only by its holder's own
outcome, so freeing never waits for another outcome, and nothing holds a slot row's
lock beyond its statement's transaction.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Insert,
    Integer,
    Select,
    Table,
    Text,
    Update,
    and_,
    any_,
    bindparam,
    exists,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from sqlalchemy_taskqueue._concurrency import key_slots_table
from sqlalchemy_taskqueue._schema import CLAIM_ORDER
from sqlalchemy_taskqueue.backends import _portable
from sqlalchemy_taskqueue.status import TaskStatus

__all__ = [
    "ORPHANED_SLOT_AGE_SECONDS",
    "add_key_slots_statement",
    "free_orphaned_slots_statement",
    "freeing_slots",
    "keyed_claim_ids",
    "keys_at_limit_statement",
]

#: How far a keyed claim looks ahead, unlocked, for tasks whose key has a free slot: this
#: many tasks per task asked for, plus :data:`HEAD_EXTRA`.
HEAD_PER_SLOT = 4
HEAD_EXTRA = 64

#: A held slot whose task is no longer in progress is freed by a rescue only once it was
#: taken this long ago: a claim that commits while the rescue runs is never mistaken for
#: an orphan (its slot was taken moments ago).
ORPHANED_SLOT_AGE_SECONDS = 60


def keyed_claim_ids(
    table: Table, conditions: list[ColumnElement[bool]], limit: ColumnElement[Any]
) -> Select[Any]:
    """The ids of up to ``limit`` due tasks with a concurrency key for which this
    statement takes a free slot, in claim order (as a sub-select taking the slots).

    1. ``head``: the first due pending tasks with a key (``conditions`` as for any
       claim) whose key had a free slot within the task's limit in the statement's
       snapshot, in claim order, read without a lock (:data:`HEAD_PER_SLOT` per task
       asked for, plus :data:`HEAD_EXTRA`): a key's backlog does not hide the other
       keys' tasks behind it.  A key with no task in progress has all its slots free;
       only the tasks of the keys in progress (hashed once per statement) are checked
       against their key's slots.
    2. ``waiting``: of those, the ones that could start (a key's first tasks, no more
       than its limit), twice ``limit`` of them, locked ``SKIP LOCKED`` and rechecked
       (the ones not granted are unlocked at commit, untouched).
    3. ``free``: the free slots of those keys, locked ``SKIP LOCKED``.  A slot another
       claim took and committed since the snapshot is rechecked on its newest version
       and dropped (``task_id IS NULL`` no longer holds): two claims can never both take
       a slot, whatever their timing.
    4. The n-th waiting task of a key gets the key's n-th free slot if that slot's number
       is within the task's own limit; the first ``limit`` such pairs in claim order.
    5. ``taken`` writes each task's id into its slot.

    Example::

        ids = keyed_claim_ids(Task.__table__, [Task.type == "sync"], literal(4))
    """
    c = table.c
    slots = key_slots_table(table)
    s = slots.c
    order = [c[name] for name in CLAIM_ORDER]
    # a scalar sub-select, not EXISTS: the planner would turn EXISTS into a join and
    # then sort every pending keyed task; as a per-row filter, the ordered index scan
    # stops as soon as it has what the LIMIT asks for
    has_free_slot = (
        select(s.slot)
        .where(
            s.concurrency_key == c.concurrency_key,
            s.task_id.is_(None),
            s.slot <= c.concurrency_limit,
        )
        .limit(1)
        .scalar_subquery()
        .is_not(None)
    )
    # a key none of whose tasks is in progress has every slot free: the keys of the tasks
    # in progress (few, read through the lease-expiry index) are hashed once, and only a
    # task of one of those keys pays the look at its key's slots
    running = table.alias("running")
    running_keys = select(running.c.concurrency_key).where(
        running.c.status == TaskStatus.IN_PROGRESS, running.c.concurrency_key.is_not(None)
    )
    may_start = or_(c.concurrency_key.not_in(running_keys), has_free_slot)
    # the head of the keyed queue, read without locking: a wide look costs index reads
    # only, and tells which tasks could start (a key's first tasks, as many as its limit)
    head = (
        select(c.id, c.concurrency_key, c.concurrency_limit, c.priority, c.run_at)
        .where(*conditions, c.concurrency_key.is_not(None), may_start)
        .order_by(*order)
        .limit(limit * HEAD_PER_SLOT + HEAD_EXTRA)
        .subquery("head")
    )
    h = head.c
    nth_of_key = (
        func.row_number()
        .over(partition_by=h.concurrency_key, order_by=[h[name] for name in CLAIM_ORDER])
        .label("nth")
    )
    ranked_head = select(h.id, h.concurrency_limit, h.priority, h.run_at, nth_of_key).subquery(
        "ranked_head"
    )
    r = ranked_head.c
    could_start = (
        select(r.id)
        .where(r.nth <= r.concurrency_limit)
        .order_by(*(r[name] for name in CLAIM_ORDER))
        .limit(limit * 2)
    )
    # then those are locked, rechecked on their newest version (still pending)
    waiting = (
        select(c.id, c.concurrency_key, c.concurrency_limit, c.priority, c.run_at)
        .where(c.id == any_(func.array(could_start.scalar_subquery())), *conditions)
        .order_by(*order)
        .with_for_update(skip_locked=True, of=table)
        .cte("waiting")
    )
    w = waiting.c
    ranked_tasks = select(
        w.id,
        w.concurrency_key,
        w.concurrency_limit,
        *(w[name] for name in CLAIM_ORDER),
        func.row_number()
        .over(partition_by=w.concurrency_key, order_by=[w[name] for name in CLAIM_ORDER])
        .label("nth"),
    ).subquery("ranked_tasks")
    # keys as arrays, here and below: the slots are read through their primary key
    # however many keys the table holds
    free = (
        select(s.concurrency_key, s.slot)
        .where(
            s.concurrency_key == any_(func.array(select(w.concurrency_key).scalar_subquery())),
            s.task_id.is_(None),
        )
        .with_for_update(skip_locked=True)
        .subquery("free")
    )
    ranked_slots = select(
        free.c.concurrency_key,
        free.c.slot,
        func.row_number()
        .over(partition_by=free.c.concurrency_key, order_by=free.c.slot)
        .label("nth"),
    ).subquery("ranked_slots")
    t, f = ranked_tasks.c, ranked_slots.c
    pairs = (
        select(t.id, f.concurrency_key, f.slot)
        .join_from(
            ranked_tasks,
            ranked_slots,
            and_(f.concurrency_key == t.concurrency_key, f.nth == t.nth),
        )
        .where(f.slot <= t.concurrency_limit)
        .order_by(*(t[name] for name in CLAIM_ORDER))
        .limit(limit)
        .cte("pairs")
    )
    taken = (
        update(slots)
        .where(s.concurrency_key == pairs.c.concurrency_key, s.slot == pairs.c.slot)
        .values(task_id=pairs.c.id, claimed_at=func.now())
        .returning(s.task_id)
        .cte("taken")
    )
    return select(taken.c.task_id)


def freeing_slots(table: Table, stmt: Update, *columns: ColumnElement[Any]) -> Select[Any]:
    """``stmt`` returning ``columns``, as a statement that also frees the key slots held
    by the tasks it changes (a task holds a slot only while in progress, so ``stmt``
    must be one that moves tasks out of ``in_progress``).  The result has ``columns``
    in order; a task without a key costs a filtered row, nothing more.

    Example::

        stmt = freeing_slots(table, update(table).where(...).values(status="cancelled"), table.c.id)
    """
    c = table.c
    labelled = [column.label(f"out_{position}") for position, column in enumerate(columns)]
    done = stmt.returning(
        *labelled, c.id.label("slot_holder"), c.concurrency_key.label("slot_key")
    ).cte("done")
    slots = key_slots_table(table)
    held = done.c.slot_key.is_not(None)
    keys = func.array(select(done.c.slot_key).where(held).scalar_subquery())
    holders = func.array(select(done.c.slot_holder).where(held).scalar_subquery())
    # arrays, not a join: the slots are found through the primary key whatever the
    # planner thinks of the table (a task holds a slot of its own key only, so the two
    # conditions together name exactly the slots the changed tasks held)
    freed = (
        update(slots)
        .where(slots.c.concurrency_key == any_(keys), slots.c.task_id == any_(holders))
        .values(task_id=None, claimed_at=None)
        .cte("freed")
    )
    return select(*(done.c[f"out_{position}"] for position in range(len(columns)))).add_cte(freed)


@functools.cache
def add_key_slots_statement(table: Table) -> Insert:
    """Make sure each key has as many slot rows as its limit: parameters ``keys`` and
    ``limits`` (arrays of equal length); slots that exist are left as they are.

    Example::

        session.execute(add_key_slots_statement(Task.__table__), {"keys": ["a"], "limits": [2]})
    """
    slots = key_slots_table(table)
    wanted = (
        func.unnest(bindparam("keys", type_=ARRAY(Text)), bindparam("limits", type_=ARRAY(Integer)))
        .table_valued("key", "slot_limit")
        .render_derived(name="wanted")
    )
    # one row per slot: a set-returning function in the select list
    rows = select(wanted.c.key, func.generate_series(1, wanted.c.slot_limit))
    return (
        pg_insert(slots)
        .from_select(["concurrency_key", "slot"], rows)
        .on_conflict_do_nothing(index_elements=["concurrency_key", "slot"])
    )


def free_orphaned_slots_statement(table: Table) -> Update:
    """Free held slots whose task is not in progress (a row deleted or changed by hand,
    outside the library), taken at least :data:`ORPHANED_SLOT_AGE_SECONDS` ago;
    returns their keys.

    Example::

        keys = session.execute(free_orphaned_slots_statement(Task.__table__)).scalars().all()
    """
    c = table.c
    slots = key_slots_table(table)
    s = slots.c
    holding = exists().where(c.id == s.task_id, c.status == TaskStatus.IN_PROGRESS)
    return (
        update(slots)
        .where(
            s.task_id.is_not(None),
            s.claimed_at < func.now() - literal_column(f"interval '{ORPHANED_SLOT_AGE_SECONDS} s'"),
            ~holding,
        )
        .values(task_id=None, claimed_at=None)
        .returning(s.concurrency_key)
    )


def keys_at_limit_statement(table: Table) -> Select[Any]:
    """Keys whose every slot is taken: ``concurrency_key``, ``slot_limit``, ``running``
    and ``waiting`` (its due pending tasks), by key.

    Example::

        rows = session.execute(keys_at_limit_statement(Task.__table__)).all()
    """
    return _portable.keys_at_limit_statement(table, now=func.now())
