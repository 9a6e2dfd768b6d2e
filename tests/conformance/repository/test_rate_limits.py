"""Rate limits: at most ``limit`` claims of a type in any window of length ``per``,
counted across every claimer, enforced where tasks are claimed."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from repository_harness import Repo
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue import RateLimit, TaskRepository
from sqlalchemy_taskqueue._controls import controls_table

HOUR = timedelta(hours=1)


def test_claims_stop_at_the_limit_and_the_rest_wait(repo: Repo, session: Session) -> None:
    ids = repo.enqueue_many("webhook", [{"n": n} for n in range(5)])
    repo.set_rate_limit("webhook", 3, per=HOUR)
    session.commit()
    assert [task.id for task in repo.dequeue_many("webhook", limit=10)] == ids[:3]
    session.commit()
    assert repo.dequeue_many("webhook", limit=10) == []
    assert repo.dequeue() is None
    session.commit()
    assert repo.rate_limits() == [RateLimit("webhook", 3, HOUR, 3, False)]
    assert repo.rate_limits()[0].at_limit
    assert repo.clear_rate_limit("webhook") is True
    assert repo.clear_rate_limit("webhook") is False
    session.commit()
    assert [task.id for task in repo.dequeue_many(limit=10)] == ids[3:]


def test_other_types_are_claimed_beside_a_limited_one(repo: Repo, session: Session) -> None:
    limited = repo.enqueue_many("webhook", [{}, {}, {}])
    free = repo.enqueue_many("email", [{}, {}, {}])
    repo.set_rate_limit("webhook", 1, per=HOUR)
    session.commit()
    claimed = {task.id for task in repo.dequeue_many(limit=10)}
    assert claimed == {limited[0], *free}


def test_the_window_slides(repo: Repo, session: Session, engine: Engine) -> None:
    repo.enqueue_many("webhook", [{"n": n} for n in range(4)])
    repo.set_rate_limit("webhook", 2, per=HOUR)
    session.commit()
    assert len(repo.dequeue_many("webhook", limit=10)) == 2
    session.commit()
    assert repo.dequeue("webhook") is None
    session.commit()
    controls = controls_table(repo.model.__table__)
    with engine.begin() as connection:  # as if the hour had passed for the first claim
        connection.execute(
            update(controls)
            .where(controls.c.task_type == "webhook")
            .values(rate_starts=[[1.0, 1], [4_000_000_000.0, 1]])
        )
    assert len(repo.dequeue_many("webhook", limit=10)) == 1
    session.commit()
    assert repo.rate_limits()[0].recent_starts == 2


def test_racing_claimers_together_stay_within_the_limit(
    repo: Repo, session: Session, session_factory: sessionmaker[Session]
) -> None:
    repo.enqueue_many("webhook", [{"n": n} for n in range(40)])
    repo.set_rate_limit("webhook", 10, per=HOUR)
    session.commit()
    model = repo.model
    start = threading.Barrier(8)
    counts: list[int] = []

    def claim() -> None:
        with session_factory() as own:
            start.wait(10)
            for _ in range(5):
                counts.append(len(TaskRepository(own, model).dequeue_many("webhook", limit=3)))
                own.commit()

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(counts) == 10  # 40 attempts: some found the row taken, none went past


def test_a_paused_limited_type_is_not_claimed(repo: Repo, session: Session) -> None:
    repo.enqueue("webhook", {})
    repo.set_rate_limit("webhook", 5, per=HOUR)
    repo.pause("webhook")
    session.commit()
    assert repo.dequeue("webhook") is None
    assert repo.rate_limits()[0].paused


def test_setting_a_limit_again_replaces_it(repo: Repo, session: Session) -> None:
    repo.set_rate_limit("webhook", 5, per=HOUR)
    repo.set_rate_limit("webhook", 7, per=60)  # seconds, as every Duration
    session.commit()
    [limit] = repo.rate_limits()
    assert (limit.limit, limit.per) == (7, timedelta(minutes=1))


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        (("webhook", 0), ValueError, "limit must be"),
        (("webhook", -3), ValueError, "limit must be"),
        (("webhook", "5"), TypeError, "limit must be an integer"),
        (("webhook", 2**40), ValueError, "limit must be"),
        ((None, 5), TypeError, "task_type must be a string"),
        (("", 5), ValueError, "task_type must not be empty"),
    ],
)
def test_bad_limits_are_refused_and_nothing_is_written(
    repo: Repo, session: Session, arguments: tuple[Any, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        repo.set_rate_limit(*arguments, per=HOUR)
    session.commit()
    assert repo.rate_limits() == []


@pytest.mark.parametrize("per", [timedelta(0), timedelta(seconds=-1), "soon", 0])
def test_a_period_that_is_not_positive_is_refused(repo: Repo, session: Session, per: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="per"):
        repo.set_rate_limit("webhook", 5, per=per)
    session.commit()
    assert repo.rate_limits() == []
