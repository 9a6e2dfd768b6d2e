"""The dashboard in a real browser: Debian's chromium, driven by selenium through its
own executable (browsers cannot be downloaded here), against a real server and a real
database.  Skipped, with the reason, where chromium or its driver is not installed.

With ``TASKQUEUE_REQUIRE_BROWSER`` set (as ``.ci/run`` does), a missing browser is an
error instead.  With ``TASKQUEUE_SCREENSHOT_DIR`` set, the tests save the screenshots the docs show.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

import pytest
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue import TaskStatus
from sqlalchemy_taskqueue.cli._dashboard import _QuietHandler, _ThreadingServer
from sqlalchemy_taskqueue.dashboard import create_wsgi_app

from .test_dashboard_actions import failed_task, status_of

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if os.environ.get("TASKQUEUE_REQUIRE_BROWSER") and (CHROMIUM is None or CHROMEDRIVER is None):
    raise RuntimeError("TASKQUEUE_REQUIRE_BROWSER is set but chromium or chromedriver is missing")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="the browser tests need Debian's chromium and chromium-driver "
    "(apt-get install chromium chromium-driver; .ci/run installs them)",
)
#: How long a page may take to show what it should (the live parts poll every 2 s).
WAIT_SECONDS = 15


@pytest.fixture(scope="module")
def browser_driver() -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def server(session_factory: sessionmaker[Session], model: Any) -> Iterator[str]:
    """The dashboard served over HTTP on a free port of 127.0.0.1; its address."""
    app = create_wsgi_app(session_factory, model)
    httpd: WSGIServer = make_server(
        "127.0.0.1", 0, app, server_class=_ThreadingServer, handler_class=_Silent
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


class _Silent(_QuietHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No request log in the test output."""


@pytest.fixture
def page(browser_driver: Any, server: str) -> Any:
    """The browser, its cookies cleared, pointed at this test's server."""
    browser_driver.delete_all_cookies()
    browser_driver.base = server
    return browser_driver


def visit(driver: Any, path: str) -> None:
    driver.get(driver.base + path)


def screenshot(driver: Any, name: str) -> None:
    directory = os.environ.get("TASKQUEUE_SCREENSHOT_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(directory) / f"dashboard-{name}.png"))


def wait_for(driver: Any, condition: Any, what: str) -> Any:
    try:
        wait = WebDriverWait(
            driver,
            WAIT_SECONDS,
            poll_frequency=0.1,
            ignored_exceptions=[StaleElementReferenceException],
        )
        return wait.until(condition)
    except TimeoutException:
        pytest.fail(f"within {WAIT_SECONDS} s: {what}")


def test_the_overview_shows_the_right_counts(page: Any, queue: Any) -> None:
    queue.enqueue_many("email", [{"n": n} for n in range(4)])
    queue.enqueue("report", {})
    failed_task(queue, "webhook")
    done = queue.enqueue("report", {})
    task = queue.dequeue("report")
    queue.complete_task(task.id, lease_token=task.lease_token)
    queue.session.commit()
    assert done is not None
    visit(page, "/")
    figure = {
        element.get_attribute("data-status"): element.text
        for element in page.find_elements(By.CSS_SELECTOR, ".card .figure")
    }
    assert figure["pending"] == "5" and figure["failed"] == "1" and figure["completed"] == "1"
    screenshot(page, "overview")


def test_filtering_by_status_and_by_an_application_column(page: Any, queue: Any) -> None:
    ours = queue.enqueue("report", {}, project_id=7)
    queue.enqueue("report", {}, project_id=8)
    bad = failed_task(queue, "webhook")
    queue.session.commit()
    visit(page, "/tasks")
    page.find_element(By.CSS_SELECTOR, "select[name=status] option[value=failed]").click()
    page.find_element(By.CSS_SELECTOR, "form.filters button").click()
    wait_for(page, lambda d: "status=failed" in d.current_url, "the filtered page")
    rows = page.find_elements(By.CSS_SELECTOR, "table.tasks tbody tr td:first-child")
    assert [row.text for row in rows] == [str(bad)]
    visit(page, "/tasks")
    field = page.find_element(By.NAME, "col.project_id")
    field.send_keys("7")
    field.submit()
    wait_for(page, lambda d: "project_id=7" in d.current_url, "the filtered page")
    rows = page.find_elements(By.CSS_SELECTOR, "table.tasks tbody tr td:first-child")
    assert [row.text for row in rows] == [str(ours)]
    screenshot(page, "tasks")


def test_a_failed_task_retried_from_its_page_becomes_pending(
    page: Any, queue: Any, session_factory: sessionmaker[Session], model: Any
) -> None:
    task_id = failed_task(queue)
    visit(page, f"/tasks/{task_id}")
    screenshot(page, "failed-task")
    page.find_element(By.XPATH, "//button[text()='Retry']").click()
    wait_for(page, lambda d: "is pending again" in d.page_source, "the retry's notice")
    assert status_of(session_factory, model, task_id) is TaskStatus.PENDING


def test_a_running_task_shows_its_progress_without_a_reload(page: Any, queue: Any) -> None:
    task_id = queue.enqueue("export", {"rows": 10_000})
    task = queue.dequeue("export")
    queue.update_progress(task_id, 10, lease_token=task.lease_token)
    queue.session.commit()
    visit(page, f"/tasks/{task_id}")
    page.execute_script("window.sameDocument = true")
    wait_for(page, lambda d: d.find_element(By.ID, "task-progress").text == "10%", "progress 10%")
    queue.update_progress(task_id, 60, lease_token=task.lease_token)
    queue.session.commit()
    wait_for(page, lambda d: d.find_element(By.ID, "task-progress").text == "60%", "progress 60%")
    assert page.execute_script("return window.sameDocument") is True  # no reload
    screenshot(page, "running-task")


def test_hostile_payloads_run_nothing(page: Any, queue: Any) -> None:
    hostile = {
        "script": "<script>window.pwned = 'script'</script>",
        "img": "<img src=x onerror=\"window.pwned = 'img'\">",
    }
    task_id = queue.enqueue("email", hostile)
    task = queue.dequeue("email")
    queue.fail_task(task_id, hostile["img"], lease_token=task.lease_token, retry=False)
    queue.session.commit()
    for path in (f"/tasks/{task_id}", "/tasks", "/failed"):
        visit(page, path)
        assert page.execute_script("return window.pwned") is None, path
        assert page.find_elements(By.CSS_SELECTOR, "main img, main script") == [], path
    visit(page, f"/tasks/{task_id}")
    assert "<script>window.pwned" in page.find_element(By.CSS_SELECTOR, "pre.json").text


def test_an_action_without_its_csrf_token_is_refused(
    page: Any, queue: Any, session_factory: sessionmaker[Session], model: Any
) -> None:
    task_id = failed_task(queue)
    visit(page, f"/tasks/{task_id}")
    page.execute_script(
        "document.querySelectorAll('input[name=csrf_token]').forEach(e => e.remove())"
    )
    page.find_element(By.XPATH, "//button[text()='Retry']").click()
    wait_for(page, lambda d: "lacks its CSRF token" in d.page_source, "the refusal")
    assert status_of(session_factory, model, task_id) is TaskStatus.FAILED
