"""``taskqueue dashboard``: the web dashboard, served on its own (install the
``dashboard`` extra).

It listens on 127.0.0.1 by default.  Any other address exposes the queue's contents and
actions to the network, so it is refused unless the dashboard asks for credentials: a
token (``--token`` or ``TASKQUEUE_DASHBOARD_TOKEN``) or a user and password
(``--username`` with ``--password`` or ``TASKQUEUE_DASHBOARD_PASSWORD``).
"""

from __future__ import annotations

import ipaddress
import re
import signal
import socketserver
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import click
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue._urls import mask_password
from sqlalchemy_taskqueue.exceptions import MissingExtraError, optional_dependency

from ._group import cli, database_url_or_fail
from ._operations import open_repository, queue_options

__all__ = ["dashboard", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``).

    >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0")
    (True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_TOKEN_IN_URL = re.compile(r"([?&]token=)[^&\s]*")


def _stop(signum: int, frame: Any) -> None:
    """Stop serving (also when the shell that started it ignores Ctrl-C's signal)."""
    raise KeyboardInterrupt


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per request: a slow page never holds up the others."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        click.echo(f"{self.address_string()} {format % args}", err=True)


@cli.command()
@queue_options
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=8787, show_default=True, help="port")
@click.option("--read-only", is_flag=True, help="show everything, change nothing")
@click.option("--title", default="Task queue", show_default=True, help="the pages' title")
@click.option(
    "--token",
    envvar="TASKQUEUE_DASHBOARD_TOKEN",
    help="ask every request for this token (Authorization: Bearer, or ?token= once)",
)
@click.option("--username", help="ask for basic auth with this user ...")
@click.option("--password", envvar="TASKQUEUE_DASHBOARD_PASSWORD", help="... and this password")
def dashboard(
    database_url: str | None,
    table: str,
    model_reference: str | None,
    host: str,
    port: int,
    read_only: bool,
    title: str,
    token: str | None,
    username: str | None,
    password: str | None,
) -> None:
    """Serve the web dashboard of a queue until interrupted (Ctrl-C or SIGTERM).

    Example: taskqueue dashboard --port 8787 --read-only
    """
    try:
        with optional_dependency("dashboard", "jinja2", feature="the dashboard"):
            from sqlalchemy_taskqueue.dashboard import Credentials, create_wsgi_app
    except MissingExtraError as exc:
        raise click.ClickException(str(exc)) from None
    credentials = None
    if token is not None or username is not None or password is not None:
        try:
            credentials = Credentials(token=token, username=username, password=password)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    if credentials is None and not is_loopback(host):
        raise click.UsageError(
            f"--host {host} would let anyone on the network use the dashboard: give it "
            "--token (or TASKQUEUE_DASHBOARD_TOKEN), or --username and --password, or "
            "keep the default 127.0.0.1"
        )
    with open_repository(database_url, table, model_reference) as repo:  # checks the table
        model = repo.model
    url = database_url_or_fail(database_url)
    engine = create_engine(url, pool_size=4, max_overflow=4, pool_pre_ping=True)
    try:
        app = create_wsgi_app(
            sessionmaker(engine, class_=Session),
            model,
            read_only=read_only,
            title=title,
            credentials=credentials,
        )
        try:
            server = make_server(
                host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
        shown = f"[{host}]" if ":" in host else host
        click.echo(
            f"dashboard of {model.__tablename__} at {mask_password(url)}: "
            f"http://{shown}:{server.server_port}/ (Ctrl-C to stop)",
        )
        for stop_signal in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, or a service manager
            signal.signal(stop_signal, _stop)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    finally:
        engine.dispose()
