"""The dashboard's requests and responses, apart from any server: the ASGI and WSGI
adapters (:mod:`._asgi`, :mod:`._wsgi`) turn their own calls into a :class:`Request`
and write the :class:`Response` back.

Also the two checks every request passes through: the optional credentials of a
dashboard served on its own (a bearer token or basic auth), and the CSRF token every
state-changing request must carry (a double-submit cookie, ``SameSite=Strict``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from urllib.parse import parse_qs

__all__ = [
    "AUTH_COOKIE",
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "Credentials",
    "Request",
    "Response",
    "cookie",
    "csrf_token_of",
    "has_valid_csrf",
    "parse_cookies",
    "parse_form",
]

#: The cookie holding a browser's CSRF token, and the form field that must repeat it.
CSRF_COOKIE = "taskqueue_csrf"
CSRF_FIELD = "csrf_token"
#: The cookie a browser keeps the dashboard's access token in, once given it.
AUTH_COOKIE = "taskqueue_auth"

#: What a CSRF token looks like (``secrets.token_urlsafe(32)``).
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
#: The most bytes a form body may have (the dashboard's forms are a few fields).
MAX_FORM_BYTES = 64 * 1024


@dataclass
class Request:
    """One request, as the adapters hand it over.

    Example::

        Request("GET", "/tasks", {"status": ["failed"]}, {}, b"", base="/jobs")
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""
    base: str = ""
    secure: bool = False
    """Whether the request came over HTTPS (as the server says it did)."""
    cookies: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.cookies = parse_cookies(self.headers.get("cookie", ""))

    @property
    def cookie_path(self) -> str:
        """The path the dashboard's cookies are set for: its mount point.

        Example::

            Request("GET", "/", {}, {}, base="/jobs").cookie_path  # "/jobs"
        """
        return self.base or "/"

    def arg(self, name: str) -> str | None:
        """The first value of query parameter ``name``, stripped; ``None`` if absent
        or blank.

        Example::

            request.arg("status")  # "failed"
        """
        values = self.query.get(name)
        if not values or not values[0].strip():
            return None
        return values[0].strip()


@dataclass
class Response:
    """What the dashboard answers.

    Example::

        Response(200, "<p>hello</p>")
    """

    status: int
    body: str | bytes = ""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def encoded(self) -> bytes:
        """The body as bytes.

        Example::

            Response(200, "ok").encoded()  # b"ok"
        """
        return self.body.encode("utf-8") if isinstance(self.body, str) else self.body

    def all_headers(self) -> list[tuple[str, str]]:
        """The headers to send, with the content type and the security headers every
        page carries (no framing by other sites, no sniffing, scripts from here only).

        Example::

            Response(200).all_headers()[0]  # ("content-type", "text/html; charset=utf-8")
        """
        return [
            ("content-type", self.content_type),
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "same-origin"),
            (
                "content-security-policy",
                "default-src 'self'; script-src 'self'; style-src 'self'; "
                "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
            ),
            ("cache-control", "no-store"),
            *self.headers,
        ]


def parse_cookies(header: str) -> dict[str, str]:
    """The cookies of a ``Cookie`` header, leniently: a cookie the host application set
    in a form the standard library's parser refuses (a space, JSON) is skipped alone,
    never taking the others with it.

    >>> parse_cookies('theme=dark mode; prefs={"a":1}; taskqueue_csrf=abc')["taskqueue_csrf"]
    'abc'
    """
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, separator, value = part.strip().partition("=")
        if separator and name and name not in cookies:
            cookies[name] = value.strip().strip('"')
    return cookies


def cookie(name: str, value: str, request: Request) -> tuple[str, str]:
    """A ``Set-Cookie`` header for one of the dashboard's cookies: HTTP-only, same-site
    only, for its mount point, and ``Secure`` over HTTPS.

    Example::

        response.headers.append(cookie(CSRF_COOKIE, token, request))
    """
    secure = "; Secure" if request.secure else ""
    return (
        "set-cookie",
        f"{name}={value}; Path={request.cookie_path}; HttpOnly; SameSite=Strict{secure}",
    )


def parse_form(request: Request) -> dict[str, str]:
    """The url-encoded form of a POST (the first value of each field).

    Example::

        parse_form(request)["csrf_token"]
    """
    if len(request.body) > MAX_FORM_BYTES:
        return {}
    fields = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def csrf_token_of(request: Request) -> tuple[str, bool]:
    """The browser's CSRF token and whether it is new (to be set as a cookie).

    Example::

        token, new = csrf_token_of(request)
    """
    token = request.cookies.get(CSRF_COOKIE, "")
    if _TOKEN.fullmatch(token):
        return token, False
    return secrets.token_urlsafe(32), True


def has_valid_csrf(request: Request, form: dict[str, str]) -> bool:
    """Whether a POST carries the CSRF token of its own cookie (and, when the browser
    says where it comes from, comes from this host).

    Example::

        if not has_valid_csrf(request, parse_form(request)): ...  # 403
    """
    expected = request.cookies.get(CSRF_COOKIE, "")
    given = form.get(CSRF_FIELD, "")
    if not _TOKEN.fullmatch(expected) or not _TOKEN.fullmatch(given):
        return False
    if not hmac.compare_digest(expected.encode(), given.encode()):
        return False
    origin = request.headers.get("origin")
    if not origin:  # older browsers; SameSite=Strict keeps the cookie from other sites
        return True
    # a browser names the site a POST comes from: it must be this dashboard's, as the
    # client reached it (behind a proxy, the host it asked the proxy for)
    hosts = {request.headers.get("host"), request.headers.get("x-forwarded-host")}
    allowed = {f"{scheme}://{host}" for host in hosts if host for scheme in ("http", "https")}
    return origin in allowed


@dataclass(frozen=True)
class Credentials:
    """What a dashboard served on its own asks of every request: a bearer token
    (``Authorization: Bearer``, or once as ``?token=`` and then a cookie) or a basic-auth
    user and password.

    Example::

        Credentials(token="s3cret")
        Credentials(username="ops", password="s3cret")
    """

    token: str | None = None
    username: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        if self.token is None and (self.username is None or self.password is None):
            raise ValueError("credentials need a token, or a username and a password")
        for name in ("token", "username", "password"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty string")
        if self.username is not None and ":" in self.username:
            raise ValueError("username must not contain ':'")
        if self.token is not None and not re.fullmatch(r"[\x21-\x7e]+", self.token):
            raise ValueError("token must be printable ASCII without spaces")

    def admits(self, request: Request) -> bool:
        """Whether ``request`` carries these credentials.

        Example::

            Credentials(token="t").admits(request)
        """
        authorization = request.headers.get("authorization", "")
        if self.token is not None:
            offered = [request.arg("token") or ""]
            if authorization.lower().startswith("bearer "):
                offered.append(authorization[7:].strip())
            if any(hmac.compare_digest(o.encode(), self.token.encode()) for o in offered if o):
                return True
            remembered = request.cookies.get(AUTH_COOKIE, "")
            if remembered and hmac.compare_digest(remembered.encode(), self.cookie_value.encode()):
                return True
        if self.username is None or not authorization.lower().startswith("basic "):
            return False
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return False
        expected = f"{self.username}:{self.password}"
        return hmac.compare_digest(decoded.encode(), expected.encode())

    @property
    def cookie_value(self) -> str:
        """What the browser keeps once it has given the token: a digest of it (the token
        itself never sits in a cookie).

        Example::

            Credentials(token="t").cookie_value  # 64 hex digits
        """
        token = self.token or ""
        return hashlib.sha256(b"sqlalchemy-taskqueue dashboard " + token.encode()).hexdigest()

    def challenge(self) -> Response:
        """The answer to a request without them.

        Example::

            return credentials.challenge()  # 401
        """
        headers = []
        if self.username is not None:
            headers.append(("www-authenticate", 'Basic realm="taskqueue", charset="UTF-8"'))
        return Response(
            401,
            "authentication required",
            content_type="text/plain; charset=utf-8",
            headers=headers,
        )
