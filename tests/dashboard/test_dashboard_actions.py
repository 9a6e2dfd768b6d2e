"""What the dashboard changes: every action is a POST carrying its CSRF token, goes
through the repository's own methods, and lands back on the page it came from."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue import TaskRepository, TaskStatus

from .conftest import Browser, text_of


def failed_task(queue: Any, task_type: str = "email") -> int:
    task_id = queue.enqueue(task_type, {})
    claimed = queue.dequeue(task_type)
    assert claimed.id == task_id
    queue.fail_task(task_id, "boom", lease_token=claimed.lease_token, retry=False)
    queue.session.commit()
    return int(task_id)


def status_of(session_factory: sessionmaker[Session], model: Any, task_id: int) -> TaskStatus:
    with session_factory() as session:
        task = TaskRepository(session, model).get_task(task_id)
        assert task is not None
        return TaskStatus(task.status)


def test_retrying_a_failed_task_from_its_page_makes_it_pending(
    browser: Browser, queue: Any, session_factory: sessionmaker[Session], model: Any
) -> None:
    task_id = failed_task(queue)
    assert f'action="/tasks/{task_id}/retry"' in text_of(browser.get(f"/tasks/{task_id}"))
    response = browser.post(f"/tasks/{task_id}/retry", {"next": f"/tasks/{task_id}"})
    assert response.status_code == 303
    assert response.headers["location"].startswith(f"/tasks/{task_id}?notice=")
    assert status_of(session_factory, model, task_id) is TaskStatus.PENDING
    assert "is pending again" in text_of(browser.get(response.headers["location"]))


def test_retrying_a_task_that_has_not_failed_is_refused(browser: Browser, queue: Any) -> None:
    task_id = queue.enqueue("email", {})
    queue.session.commit()
    browser.get(f"/tasks/{task_id}")
    response = browser.post(f"/tasks/{task_id}/retry")
    assert response.status_code == 400
    assert "retry" in text_of(response)


def test_retry_all_failed_of_one_type(
    browser: Browser, queue: Any, session_factory: sessionmaker[Session], model: Any
) -> None:
    emails = [failed_task(queue, "email") for _ in range(2)]
    report = failed_task(queue, "report")
    html = text_of(browser.get("/failed?type=email"))
    assert 'action="/failed/retry?type=email"' in html
    response = browser.post("/failed/retry?type=email", {"next": "/failed"})
    assert response.status_code == 303
    assert "2+failed+task" in response.headers["location"]
    assert [status_of(session_factory, model, t) for t in emails] == [TaskStatus.PENDING] * 2
    assert status_of(session_factory, model, report) is TaskStatus.FAILED


def test_retry_all_failed_matching_an_application_column(
    browser: Browser, queue: Any, session_factory: sessionmaker[Session], model: Any
) -> None:
    ours, theirs = (queue.enqueue("report", {}, project_id=p) for p in (7, 8))
    for task_id in (ours, theirs):
        claimed = queue.dequeue("report")
        assert claimed.id == task_id
        queue.fail_task(task_id, "boom", lease_token=claimed.lease_token, retry=False)
    queue.session.commit()
    browser.get("/failed?col.project_id=7")
    assert browser.post("/failed/retry?col.project_id=7").status_code == 303
    assert status_of(session_factory, model, ours) is TaskStatus.PENDING
    assert status_of(session_factory, model, theirs) is TaskStatus.FAILED


def test_cancelling_a_running_task_revokes_it(
    browser: Browser, queue: Any, session_factory: sessionmaker[Session], model: Any
) -> None:
    task_id = queue.enqueue("export", {})
    claimed = queue.dequeue("export")
    queue.session.commit()
    browser.get(f"/tasks/{task_id}")
    assert browser.post(f"/tasks/{task_id}/cancel").status_code == 303
    assert status_of(session_factory, model, task_id) is TaskStatus.CANCELLED
    with session_factory() as session:
        repo = TaskRepository(session, model)
        assert repo.complete_tasks([(task_id, claimed.lease_token, None)]) == set()
    # a second cancel: the task has finished
    response = browser.post(f"/tasks/{task_id}/cancel")
    assert response.status_code == 409


def test_pause_resume_and_rate_limits_from_the_controls_page(
    browser: Browser, queue: Any, session_factory: sessionmaker[Session], model: Any
) -> None:
    browser.get("/controls")
    assert browser.post("/controls/pause", {"task_type": "email"}).status_code == 303
    assert browser.post("/controls/pause").status_code == 303  # the whole queue
    with session_factory() as session:
        assert sorted(TaskRepository(session, model).paused()) == ["*", "email"]
    assert browser.post("/controls/resume").status_code == 303
    assert browser.post("/controls/resume", {"task_type": "email"}).status_code == 303
    fields = {"task_type": "report", "limit": "20", "per_seconds": "1"}
    assert browser.post("/controls/rate-limit", fields).status_code == 303
    with session_factory() as session:
        repo = TaskRepository(session, model)
        assert repo.paused() == []
        [limit] = [lim for lim in repo.rate_limits() if lim.task_type == "report"]
        assert (limit.limit, limit.per) == (20, timedelta(seconds=1))
    assert browser.post("/controls/rate-limit/clear", {"task_type": "report"}).status_code == 303
    with session_factory() as session:
        assert all(lim.limit is None for lim in TaskRepository(session, model).rate_limits())


def test_bad_input_to_an_action_is_refused_and_changes_nothing(
    browser: Browser, session_factory: sessionmaker[Session], model: Any
) -> None:
    browser.get("/controls")
    bad_limits = [
        {"task_type": "report", "limit": "0", "per_seconds": "1"},
        {"task_type": "report", "limit": "ten", "per_seconds": "1"},
        {"task_type": "report", "limit": "5", "per_seconds": "-1"},
        {"task_type": "", "limit": "5", "per_seconds": "1"},
    ]
    for fields in bad_limits:
        response = browser.post("/controls/rate-limit", fields)
        assert response.status_code == 400, fields
    assert browser.post("/controls/pause", {"task_type": "bad\x00type"}).status_code == 400
    with session_factory() as session:
        repo = TaskRepository(session, model)
        assert repo.rate_limits() == [] and repo.paused() == []


def test_an_action_never_redirects_to_another_site(browser: Browser, queue: Any) -> None:
    browser.get("/controls")
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        response = browser.post("/controls/pause", {"task_type": "email", "next": target})
        assert response.headers["location"].startswith("/?notice="), target


def test_discarding_a_failed_task_deletes_it(
    browser: Browser, queue: Any, session_factory: sessionmaker[Session], model: Any
) -> None:
    task_id = failed_task(queue)
    html = text_of(browser.get(f"/tasks/{task_id}"))
    assert f'action="/tasks/{task_id}/discard"' in html
    response = browser.post(f"/tasks/{task_id}/discard", {"next": "/failed"})
    assert response.status_code == 303
    assert response.headers["location"].startswith("/failed?notice=")
    with session_factory() as session:
        assert TaskRepository(session, model).get_task(task_id) is None
    running = queue.enqueue("export", {})
    queue.session.commit()
    assert browser.post(f"/tasks/{running}/discard").status_code == 409
    assert status_of(session_factory, model, running) is TaskStatus.PENDING
