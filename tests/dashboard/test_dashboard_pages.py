"""What the dashboard shows: counts, the task list with its filters and pages, a task's
details, workers, schedules and flow controls, under any mount point."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue.dashboard import create_app, create_wsgi_app

from .conftest import Browser, asgi_get, asgi_request, text_of


def ids_listed(html: str) -> list[int]:
    return [int(found) for found in re.findall(r'<td><a href="[^"]*/tasks/(\d+)">', html)]


def test_overview_shows_the_counts_by_status(browser: Browser, queue: Any) -> None:
    for n in range(3):
        queue.enqueue("email", {"n": n})
    claimed = queue.dequeue("email")
    queue.fail_task(claimed.id, "smtp down", lease_token=claimed.lease_token, retry=False)
    queue.session.commit()
    html = text_of(browser.get("/"))
    assert re.search(r'data-status="pending">2<', html)
    assert re.search(r'data-status="failed">1<', html)
    assert re.search(r'data-status="completed">0<', html)
    assert "email" in html


def test_overview_charts_the_last_hour(browser: Browser, queue: Any) -> None:
    task_id = queue.enqueue("email", {})
    claimed = queue.dequeue("email")
    assert claimed.id == task_id
    queue.complete_task(task_id, lease_token=claimed.lease_token)
    queue.session.commit()
    html = text_of(browser.get("/"))
    assert "1 completed, 0 failed" in html
    assert "1 finished, failure rate 0.0%" in html


def test_tasks_filter_by_status(browser: Browser, queue: Any) -> None:
    pending = queue.enqueue("email", {})
    failed = queue.enqueue("email", {})
    claimed = queue.dequeue("email")
    assert claimed.id == pending
    queue.fail_task(pending, "boom", lease_token=claimed.lease_token, retry=False)
    queue.session.commit()
    assert ids_listed(text_of(browser.get("/tasks?status=failed"))) == [pending]
    assert ids_listed(text_of(browser.get("/tasks?status=pending"))) == [failed]
    assert ids_listed(text_of(browser.get("/tasks"))) == [failed, pending]


def test_tasks_filter_by_an_application_column(browser: Browser, queue: Any) -> None:
    ours = queue.enqueue("report", {}, project_id=7)
    queue.enqueue("report", {}, project_id=8)
    queue.session.commit()
    html = text_of(browser.get("/tasks?col.project_id=7"))
    assert ids_listed(html) == [ours]
    assert 'name="col.project_id"' in html


def test_tasks_filter_by_type_and_creation_date(browser: Browser, queue: Any) -> None:
    email = queue.enqueue("email", {})
    queue.enqueue("report", {})
    queue.session.commit()
    assert ids_listed(text_of(browser.get("/tasks?type=email"))) == [email]
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).date().isoformat()
    assert ids_listed(text_of(browser.get(f"/tasks?from={tomorrow}"))) == []
    assert len(ids_listed(text_of(browser.get(f"/tasks?to={tomorrow}")))) == 2


def test_search_finds_a_task_by_id_or_dedupe_key(browser: Browser, queue: Any) -> None:
    keyed, _ = queue.enqueue_if_not_exists("sync", {}, dedupe_key="customer-42")
    other = queue.enqueue("sync", {})
    queue.session.commit()
    assert ids_listed(text_of(browser.get("/tasks?search=customer-42"))) == [keyed]
    assert ids_listed(text_of(browser.get(f"/tasks?search={other}"))) == [other]


def test_pages_follow_each_other_without_overlap(browser: Browser, queue: Any) -> None:
    queue.enqueue_many("bulk", [{"n": n} for n in range(60)])
    queue.session.commit()
    first = text_of(browser.get("/tasks?type=bulk"))
    link = re.search(r'rel="next" href="\?([^"]+)"', first)
    assert link is not None
    second = text_of(browser.get("/tasks?" + link.group(1).replace("&amp;", "&")))
    first_ids, second_ids = ids_listed(first), ids_listed(second)
    assert len(first_ids) == 50 and len(second_ids) == 10
    assert sorted(first_ids + second_ids, reverse=True) == first_ids + second_ids
    assert 'rel="next"' not in second


def test_a_task_page_shows_its_details(browser: Browser, queue: Any) -> None:
    task_id = queue.enqueue("export", {"rows": 10}, project_id=3)
    claimed = queue.dequeue("export")
    queue.update_progress(task_id, 40, lease_token=claimed.lease_token)
    queue.session.commit()
    html = text_of(browser.get(f"/tasks/{task_id}"))
    assert "&#34;rows&#34;: 10" in html or '"rows": 10' in html.replace("&#34;", '"')
    assert 'id="task-progress">40%' in html
    assert claimed.lease_owner in html
    assert "<dt>project_id</dt><dd>3</dd>" in html
    assert "<dt>timeout_seconds</dt>" not in html  # the queue's own, not the app's
    # running: the live part refreshes itself
    assert f'data-refresh="/tasks/{task_id}?part=live"' in html


def test_the_live_part_of_a_task_follows_its_progress(browser: Browser, queue: Any) -> None:
    task_id = queue.enqueue("export", {})
    claimed = queue.dequeue("export")
    queue.session.commit()
    assert 'id="task-progress">0%' in text_of(browser.get(f"/tasks/{task_id}?part=live"))
    queue.update_progress(task_id, 75, lease_token=claimed.lease_token)
    queue.session.commit()
    live = text_of(browser.get(f"/tasks/{task_id}?part=live"))
    assert 'id="task-progress">75%' in live
    assert "<html" not in live


def test_an_unknown_task_is_not_found(browser: Browser, model: Any) -> None:
    response = browser.get("/tasks/999999")
    assert response.status_code == 404
    assert "no task 999999" in text_of(response)


def test_workers_schedules_and_controls_pages_render(browser: Browser, queue: Any) -> None:
    queue.pause("email")
    queue.set_rate_limit("report", 5, per=timedelta(seconds=1))
    queue.session.commit()
    assert "No live worker." in text_of(browser.get("/workers"))
    assert "No schedule" in text_of(browser.get("/schedules"))
    controls = text_of(browser.get("/controls"))
    assert "<td>email</td>" in controls
    assert "<td>report</td><td>5</td>" in controls


def test_a_mounted_dashboard_links_below_its_mount_point(
    session_factory: sessionmaker[Session], model: Any, queue: Any
) -> None:
    task_id = queue.enqueue("email", {})
    queue.session.commit()
    app = create_app(session_factory, model)
    status, headers, html = asgi_get(app, "/tasks", root_path="/jobs")
    assert status == 200
    assert f'href="/jobs/tasks/{task_id}"' in html
    assert 'href="/jobs/static/dashboard.css"' in html
    assert headers["x-frame-options"] == "DENY"
    status, headers, css = asgi_get(app, "/static/dashboard.css", root_path="/jobs")
    assert status == 200 and headers["content-type"].startswith("text/css")
    assert "--accent" in css
    assert asgi_get(app, "/nowhere", root_path="/jobs")[0] == 404


def test_mounted_in_fastapi_behind_the_apps_own_guard(
    session_factory: sessionmaker[Session], model: Any
) -> None:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import PlainTextResponse

    dashboard = create_app(session_factory, model)

    async def require_admin(request: Request) -> None:
        if request.headers.get("x-admin") != "yes":
            raise HTTPException(status_code=403, detail="admins only")

    async def guarded_dashboard(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            try:
                await require_admin(Request(scope))
            except HTTPException as refused:
                response = PlainTextResponse(refused.detail, status_code=refused.status_code)
                await response(scope, receive, send)
                return
        await dashboard(scope, receive, send)

    app = FastAPI()
    app.mount("/jobs", guarded_dashboard)
    assert asgi_get(app, "/jobs/tasks")[0] == 403
    status, _, html = asgi_get(app, "/jobs/tasks", headers={"x-admin": "yes"})
    assert status == 200
    assert 'href="/jobs/workers"' in html


def test_a_traced_task_shows_its_trace_id(browser: Browser, queue: Any) -> None:
    trace = pytest.importorskip("opentelemetry.trace")
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    tracer = sdk_trace.TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        task_id = queue.enqueue("email", {})
    queue.session.commit()
    trace_id = trace.format_trace_id(span.get_span_context().trace_id)
    assert f"<dt>trace id</dt><dd>{trace_id}</dd>" in text_of(browser.get(f"/tasks/{task_id}"))


def test_an_async_app_mounts_it_with_its_async_sessionmaker(
    database_url: str, model: Any, queue: Any, session_factory: sessionmaker[Session]
) -> None:
    from sqlalchemy import make_url
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from sqlalchemy.pool import NullPool

    from sqlalchemy_taskqueue import TaskRepository, TaskStatus

    task_id = queue.enqueue("email", {})
    claimed = queue.dequeue("email")
    queue.fail_task(task_id, "boom", lease_token=claimed.lease_token, retry=False)
    queue.session.commit()
    url = make_url(database_url).set(drivername="postgresql+asyncpg")
    engine = create_async_engine(url, poolclass=NullPool)  # one event loop per request here
    app = create_app(async_sessionmaker(engine), model)
    status, _, html = asgi_request(app, "GET", f"/tasks/{task_id}")
    assert status == 200 and "boom" in html
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token is not None
    status, answered, _ = asgi_request(
        app,
        "POST",
        f"/tasks/{task_id}/retry",
        body=f"csrf_token={token.group(1)}".encode(),
        headers={
            "cookie": f"taskqueue_csrf={token.group(1)}",
            "content-type": "application/x-www-form-urlencoded",
        },
    )
    assert status == 303 and answered["location"].startswith("/?notice=task+")
    with session_factory() as session:
        task = TaskRepository(session, model).get_task(task_id)
        assert task is not None and task.status is TaskStatus.PENDING
    with pytest.raises(TypeError, match="async_sessionmaker serves create_app"):
        create_wsgi_app(async_sessionmaker(engine), model)
