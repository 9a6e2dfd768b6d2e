"""The dashboard's defences: what a task holds is shown as text, every action needs its
CSRF token, a read-only dashboard refuses actions, and a dashboard served on its own
asks for its credentials."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue import TaskStatus
from sqlalchemy_taskqueue.dashboard import Credentials, create_app, create_wsgi_app

from .conftest import Browser, asgi_get, text_of
from .test_dashboard_actions import failed_task, status_of

HOSTILE = ["<script>alert(1)</script>", '<img src=x onerror="alert(2)">']


def test_hostile_task_contents_are_shown_as_text(browser: Browser, queue: Any) -> None:
    task_id = queue.enqueue("email", {"body": HOSTILE[0], "to": HOSTILE[1]}, project_id=None)
    claimed = queue.dequeue("email")
    queue.fail_task(task_id, HOSTILE[1] + HOSTILE[0], lease_token=claimed.lease_token, retry=False)
    queue.session.commit()
    for page in (f"/tasks/{task_id}", "/tasks", "/failed", "/"):
        html = text_of(browser.get(page))
        assert "<script>alert" not in html and "<img src=x" not in html, page
    detail = text_of(browser.get(f"/tasks/{task_id}"))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in detail
    assert "&lt;img src=x onerror=" in detail


def test_hostile_notice_and_filters_are_escaped(browser: Browser, model: Any) -> None:
    html = text_of(browser.get("/tasks?type=" + HOSTILE[0] + "&notice=" + HOSTILE[1]))
    assert "<script>alert" not in html and "<img src=x" not in html


def test_pages_forbid_inline_scripts_and_framing(browser: Browser, model: Any) -> None:
    headers = browser.get("/").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"


def test_an_action_without_its_csrf_token_is_refused(
    browser: Browser, queue: Any, session_factory: sessionmaker[Session], model: Any
) -> None:
    task_id = failed_task(queue)
    browser.get(f"/tasks/{task_id}")
    assert browser.post(f"/tasks/{task_id}/retry", csrf=False).status_code == 403
    wrong = browser.post(f"/tasks/{task_id}/retry", {"csrf_token": "x" * 43})
    assert wrong.status_code == 403
    assert status_of(session_factory, model, task_id) is TaskStatus.FAILED


def test_an_action_from_another_origin_is_refused(
    browser: Browser, queue: Any, session_factory: sessionmaker[Session], model: Any
) -> None:
    task_id = failed_task(queue)
    browser.get(f"/tasks/{task_id}")
    response = browser.client.post(
        f"/tasks/{task_id}/retry",
        data=f"csrf_token={browser.last_token}",
        content_type="application/x-www-form-urlencoded",
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 403
    assert status_of(session_factory, model, task_id) is TaskStatus.FAILED


def test_a_get_changes_nothing(
    browser: Browser, queue: Any, session_factory: sessionmaker[Session], model: Any
) -> None:
    task_id = failed_task(queue)
    assert browser.get(f"/tasks/{task_id}/retry").status_code == 404
    assert status_of(session_factory, model, task_id) is TaskStatus.FAILED


def test_a_read_only_dashboard_hides_and_refuses_actions(
    session_factory: sessionmaker[Session], model: Any, queue: Any
) -> None:
    task_id = failed_task(queue)
    browser = Browser(create_wsgi_app(session_factory, model, read_only=True))
    html = text_of(browser.get(f"/tasks/{task_id}"))
    assert '<form method="post"' not in html and "read-only" in html
    browser.last_token = browser.client.get_cookie("taskqueue_csrf").value  # type: ignore[union-attr]
    assert browser.post(f"/tasks/{task_id}/retry").status_code == 403
    assert status_of(session_factory, model, task_id) is TaskStatus.FAILED


def test_credentials_are_asked_for(session_factory: sessionmaker[Session], model: Any) -> None:
    by_token = Browser(
        create_wsgi_app(session_factory, model, credentials=Credentials(token="s3cret"))
    )
    assert by_token.get("/").status_code == 401
    assert by_token.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert by_token.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    given = by_token.get("/workers?token=s3cret&type=x")
    assert given.status_code == 303  # out of the address bar, remembered by a digest
    assert given.headers["location"] == "/workers?type=x"
    assert "s3cret" not in given.headers["set-cookie"]
    assert by_token.get("/workers").status_code == 200  # the cookie it was given
    basic = Browser(
        create_wsgi_app(
            session_factory, model, credentials=Credentials(username="ops", password="pw")
        )
    )
    refused = basic.get("/")
    assert refused.status_code == 401 and "Basic" in refused.headers["www-authenticate"]
    good = base64.b64encode(b"ops:pw").decode()
    bad = base64.b64encode(b"ops:nope").decode()
    assert basic.get("/", headers={"Authorization": f"Basic {bad}"}).status_code == 401
    assert basic.get("/", headers={"Authorization": f"Basic {good}"}).status_code == 200


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"session_factory": "not callable"}, TypeError),
        ({"model": object}, TypeError),
        ({"read_only": "yes"}, TypeError),
        ({"title": " "}, ValueError),
        ({"credentials": "s3cret"}, TypeError),
    ],
)
def test_create_app_refuses_bad_arguments(
    session_factory: sessionmaker[Session], model: Any, arguments: dict[str, Any], error: type
) -> None:
    given: dict[str, Any] = {"session_factory": session_factory, "model": model, **arguments}
    with pytest.raises(error):
        create_app(given.pop("session_factory"), given.pop("model"), **given)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "need a token"),
        ({"token": ""}, "token must be a non-empty string"),
        ({"username": "ops"}, "need a token"),
        ({"username": "a:b", "password": "x"}, "must not contain"),
    ],
)
def test_credentials_refuse_bad_arguments(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Credentials(**arguments)


def test_bad_filters_are_refused_clearly(browser: Browser, model: Any) -> None:
    for query, message in [
        ("status=lost", "status must be among"),
        ("from=yesterday", "from must be a date"),
        ("col.project_id=seven", "project_id must be a whole number"),
        ("col.project_id=99999999999999999999999", "project_id must be a whole number"),
        ("before_id=%C2%B2", "before_id must be a task id"),
        ("before_id=abc", "before_id must be a task id"),
        ("from=2026-02-01&to=2026-01-01", "must be before"),
    ]:
        response = browser.get(f"/tasks?{query}")
        assert response.status_code == 400, query
        assert message in text_of(response), query


def test_the_asgi_form_answers_like_the_wsgi_form(
    session_factory: sessionmaker[Session], model: Any
) -> None:
    app = create_app(session_factory, model, credentials=Credentials(token="t"))
    assert asgi_get(app, "/")[0] == 401
    status, headers, _ = asgi_get(app, "/?token=t")
    assert status == 303 and headers["location"] == "/"
    remembered = headers["set-cookie"].split(";")[0]
    assert remembered.startswith("taskqueue_auth=") and remembered != "taskqueue_auth=t"
    assert asgi_get(app, "/", headers={"cookie": remembered})[0] == 200


def test_the_host_apps_odd_cookies_break_nothing(browser: Browser, queue: Any) -> None:
    task_id = failed_task(queue)
    browser.get(f"/tasks/{task_id}")
    token = browser.client.get_cookie("taskqueue_csrf").value  # type: ignore[union-attr]
    response = browser.client.post(
        f"/tasks/{task_id}/retry",
        data=f"csrf_token={token}",
        content_type="application/x-www-form-urlencoded",
        headers={"Cookie": f'theme=dark mode; prefs={{"a":1}}; taskqueue_csrf={token}'},
    )
    assert response.status_code == 303


def test_a_forged_notice_is_not_shown(browser: Browser, model: Any) -> None:
    html = text_of(browser.get("/?notice=Session+expired,+log+in+at+evil.example&sig=0"))
    assert "evil.example" not in html


@pytest.mark.parametrize("target", ["/\t/evil.example", "/x\r\nSet-Cookie: a=b", "/é"])
def test_an_action_never_sends_the_browser_to_a_crafted_place(
    browser: Browser, model: Any, target: str
) -> None:
    browser.get("/controls")
    response = browser.post("/controls/pause", {"task_type": "email", "next": target})
    assert response.status_code == 303
    assert response.headers["location"].startswith("/?notice="), response.headers["location"]


@pytest.mark.parametrize(
    ("path", "fields", "status"),
    [
        ("/tasks/5%0A/retry", {}, 404),
        ("/controls/rate-limit", {"task_type": "r", "limit": "5", "per_seconds": "inf"}, 400),
        ("/controls/rate-limit", {"task_type": "r", "limit": "5", "per_seconds": "1e300"}, 400),
        ("/controls/pause", {"task_type": "a{}{"}, 303),
        ("/schedules/run", {"name": "../tasks/7/cancel?"}, 400),
    ],
)
def test_crafted_actions_get_a_clear_answer(
    browser: Browser, model: Any, path: str, fields: dict[str, str], status: int
) -> None:
    browser.get("/controls")
    assert browser.post(path, fields).status_code == status


def test_a_non_ascii_csrf_token_is_refused(browser: Browser, queue: Any) -> None:
    task_id = failed_task(queue)
    browser.get(f"/tasks/{task_id}")
    assert browser.post(f"/tasks/{task_id}/retry", {"csrf_token": "é" * 43}).status_code == 403


def test_cookies_are_secure_over_https(session_factory: sessionmaker[Session], model: Any) -> None:
    client = Browser(create_wsgi_app(session_factory, model)).client
    over_https = client.get("/", base_url="https://dashboard.example")
    assert "Secure" in over_https.headers["set-cookie"]
    assert "Secure" not in client.get("/", base_url="http://localhost").headers["set-cookie"]
