"""How an idle worker finds new work when it does not listen for notifications: it
polls.  (Waking on LISTEN/NOTIFY is PostgreSQL's:
``tests/postgresql/test_listen_notify.py``.)"""

from __future__ import annotations

import threading
from typing import Any

from processes import wait_for
from twins import running
from worker_harness import Factory, MakeWorker, enqueue


def test_polling_only_mode_still_finds_work(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    finished = threading.Event()
    worker = make_worker(
        session_factory,
        clean_table,
        {"job": lambda task, ctx: finished.set()},
        listen=False,
        poll_interval=0.1,
    )
    with running(worker):
        wait_for(worker.idle.is_set)
        assert not worker.listening.is_set()
        enqueue(session_factory, clean_table, "job")
        assert finished.wait(10)
