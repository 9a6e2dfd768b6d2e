"""The rules every public entry point applies to its arguments, in one place.

Each ``require_*`` function returns quietly or raises ``TypeError`` (wrong kind of value)
or ``ValueError`` (right kind, bad value) with a message naming the argument, before
anything is written::

    >>> require_int("priority", 2**40, maximum=INT4_MAX)
    Traceback (most recent call last):
        ...
    ValueError: priority must be <= 2147483647, got 1099511627776
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from .durations import MAX_DURATION, to_seconds

INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1
INT8_MAX = 2**63 - 1

#: Longest task type, in characters.
MAX_TASK_TYPE_LENGTH = 255
#: Longest dedupe key, in UTF-8 bytes (it shares a B-tree index entry with the type).
MAX_DEDUPE_KEY_BYTES = 1024
#: Most retries a task may be given; beyond this a task is retried "forever", which
#: hides a broken handler instead of reporting it.
MAX_RETRIES = 1000
#: Default limit on a payload's size as JSON text (``TaskRepository(max_payload_bytes=)``).
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
#: Default limit on a handler's result as JSON text (``max_result_bytes=`` of the
#: repository and the workers).
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024
#: Deepest nesting of arrays and objects in a payload, a result or a progress match
#: (``{"a": [1]}`` is 2 levels).  Decoding deeper documents exhausts Python's recursion
#: limit in the worker (and MySQL refuses documents deeper than 100).
MAX_JSON_DEPTH = 64
#: How far before now a ``run_at`` datetime may lie: a due time just missed is fine, one
#: from last month is a bug (it also jumps the queue, which is ordered by ``run_at``).
RUN_AT_PAST_LIMIT = timedelta(days=7)
#: The shortest lease: a shorter one expires before a heartbeat's round trip can renew
#: it, and the worker's tasks would be rescued from under it.
MIN_LEASE_DURATION = timedelta(seconds=1)


class BoolArgumentError(TypeError, ValueError):
    """A bool was given where a number is expected (``True`` is not progress 1)."""


def require_int(
    name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None
) -> None:
    """An ``int`` (never a bool) within ``minimum``..``maximum``.

    >>> require_int("limit", 10, minimum=1)
    """
    if isinstance(value, bool):
        raise BoolArgumentError(f"{name} must be an integer, not a bool ({value!r})")
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")


def require_bool(name: str, value: Any) -> None:
    """A ``bool`` (a truthy ``1`` or ``"yes"`` is refused, not guessed at).

    >>> require_bool("relaxed_commit", True)
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


def require_task_id(task_id: Any) -> None:
    """A task id: a positive 64-bit integer.

    >>> require_task_id(42)
    """
    require_int("task_id", task_id, minimum=1, maximum=INT8_MAX)


def require_task_type(task_type: Any, *, new: bool = False) -> None:
    """A non-empty string (a ``StrEnum`` member is one) that PostgreSQL can store; a
    ``new`` one (being enqueued) is also at most :data:`MAX_TASK_TYPE_LENGTH` characters.

    >>> require_task_type("email")
    >>> require_task_type("x" * 300, new=True)
    Traceback (most recent call last):
        ...
    ValueError: task_type must be at most 255 characters, got 300
    """
    if not isinstance(task_type, str):
        raise TypeError(f"task_type must be a string, got {task_type!r}")
    if not task_type.strip():
        raise ValueError("task_type must not be empty")
    if new and len(task_type) > MAX_TASK_TYPE_LENGTH:
        raise ValueError(
            f"task_type must be at most {MAX_TASK_TYPE_LENGTH} characters, got {len(task_type)}"
        )
    require_storable_text("task_type", task_type)


def require_schedule_name(name: Any) -> None:
    """A non-empty string of at most :data:`MAX_TASK_TYPE_LENGTH` characters that the
    database can store.

    >>> require_schedule_name("nightly_report")
    >>> require_schedule_name("")
    Traceback (most recent call last):
        ...
    ValueError: schedule name must not be empty
    """
    if not isinstance(name, str):
        raise TypeError(f"schedule name must be a string, got {name!r}")
    if not name.strip():
        raise ValueError("schedule name must not be empty")
    if len(name) > MAX_TASK_TYPE_LENGTH:
        raise ValueError(
            f"schedule name must be at most {MAX_TASK_TYPE_LENGTH} characters, got {len(name)}"
        )
    require_storable_text("schedule name", name)


def task_type_name(task_type: str) -> str:
    """The text stored for a task type: the string value itself, also for an enum
    member whose ``str()`` is its name (a ``class TaskType(str, Enum)``).

    >>> import enum
    >>> class TaskType(str, enum.Enum):
    ...     EXPORT = "export"
    >>> task_type_name(TaskType.EXPORT)
    'export'
    """
    return str.__str__(task_type)


def require_dedupe_key(dedupe_key: Any) -> None:
    """A non-empty string of at most :data:`MAX_DEDUPE_KEY_BYTES` UTF-8 bytes.

    >>> require_dedupe_key("import:customers.csv")
    """
    require_key("dedupe_key", dedupe_key)


def require_key(name: str, key: Any) -> None:
    """A key (a dedupe or concurrency key, called ``name`` in the error): a non-empty
    string that PostgreSQL can store, of at most :data:`MAX_DEDUPE_KEY_BYTES` UTF-8
    bytes.

    >>> require_key("concurrency_key", "")
    Traceback (most recent call last):
        ...
    ValueError: concurrency_key must be a non-empty string, got ''
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"{name} must be a non-empty string, got {key!r}")
    require_storable_text(name, key)
    size = len(key.encode("utf-8"))
    if size > MAX_DEDUPE_KEY_BYTES:
        raise ValueError(f"{name} must be at most {MAX_DEDUPE_KEY_BYTES} bytes (UTF-8), got {size}")


def require_storable_text(name: str, value: str) -> None:
    """``ValueError`` for text PostgreSQL refuses: NUL characters, unpaired surrogates.

    >>> require_storable_text("task_type", "nul" + chr(0))
    Traceback (most recent call last):
        ...
    ValueError: task_type contains a NUL character, which PostgreSQL cannot store
    """
    if "\x00" in value:
        raise ValueError(f"{name} contains a NUL character, which PostgreSQL cannot store")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{name} contains an unpaired surrogate, which is not valid text"
        ) from None


def require_max_retries(max_retries: Any) -> None:
    """An ``int`` from 0 to :data:`MAX_RETRIES`.

    >>> require_max_retries(5)
    """
    require_int("max_retries", max_retries, minimum=0, maximum=MAX_RETRIES)


def task_types_argument(task_type: str | Sequence[str] | None) -> list[str] | None:
    """One type, several, or ``None`` (any) as a list of type names (or ``None``).

    >>> task_types_argument("email")
    ['email']
    """
    if task_type is None:
        return None
    if isinstance(task_type, str):
        require_task_type(task_type)
        return [task_type_name(task_type)]
    if not isinstance(task_type, Iterable):
        raise TypeError(
            f"task_type must be a type name, a sequence of type names or None, got {task_type!r}"
        )
    types = list(task_type)
    if not types:
        raise ValueError("task_type must name at least one type (or be None for any)")
    for item in types:
        require_task_type(item)
    return [task_type_name(item) for item in types]


#: ``\u0000`` in JSON text preceded by an even number of backslashes: a real NUL.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def storable_text(text: str) -> str:
    r"""``text`` with what PostgreSQL's ``text`` type refuses (NUL, lone surrogates) escaped.

    >>> print(storable_text("nul:" + chr(0) + " surrogate:" + chr(0xD800)))
    nul:\x00 surrogate:\ud800
    """
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


#: Longest error message stored in ``error_message`` (and logged), in characters: a
#: longer one keeps its first and last halves around a note of what was left out.
MAX_ERROR_MESSAGE_LENGTH = 4000


def bounded_error_message(message: str) -> str:
    """``message`` as stored: at most :data:`MAX_ERROR_MESSAGE_LENGTH` characters (head
    and tail kept), with what PostgreSQL's ``text`` refuses escaped
    (:func:`storable_text`).

    >>> text = bounded_error_message("ValueError: " + "x" * 10_000 + " at row 7")
    >>> len(text) <= MAX_ERROR_MESSAGE_LENGTH, text[:14], text[-8:]
    (True, 'ValueError: xx', 'at row 7')
    """
    message = storable_text(message)
    if len(message) <= MAX_ERROR_MESSAGE_LENGTH:
        return message
    half = (MAX_ERROR_MESSAGE_LENGTH - 64) // 2  # 64: room for the note
    note = f"\n[... {len(message) - 2 * half} characters left out ...]\n"
    return message[:half] + note + message[-half:]


def require_json(name: str, value: Any, *, allow_none: bool, max_bytes: int | None = None) -> None:
    """Raise ``TypeError`` unless ``value`` is JSON that PostgreSQL can store.

    ``ValueError`` for text PostgreSQL refuses in ``jsonb`` (NUL characters, unpaired
    UTF-16 surrogates) and for JSON text longer than ``max_bytes`` (UTF-8).

    >>> require_json("payload", {"rows": [1, 2]}, allow_none=False)
    >>> require_json("payload", {"tags": {1}}, allow_none=False)
    Traceback (most recent call last):
        ...
    TypeError: payload is not JSON-serialisable: Object of type set is not JSON serializable
    >>> require_json("payload", ["x" * 2000], allow_none=False, max_bytes=1024)
    Traceback (most recent call last):
        ...
    ValueError: payload is 2004 bytes as JSON, over the limit of 1024 (max_payload_bytes)
    """
    if value is None and allow_none:
        return
    json_text(name, value, max_bytes=max_bytes)  # refuses None with a clear message


def json_text(name: str, value: Any, *, max_bytes: int | None = None) -> str:
    """``value`` as JSON text, after the checks of :func:`require_json` (``None`` is
    refused).

    >>> json_text("payload", {"to": "ana@example.com"})
    '{"to": "ana@example.com"}'
    """
    if value is None:
        raise TypeError(f"{name} must be a JSON value, not None (use {{}} for no arguments)")
    nested_too_deep = nests_deeper_than(value, MAX_JSON_DEPTH)
    try:
        # too deep, it is dumped only to tell a circular reference (found at once) apart
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} is not JSON-serialisable: {exc}") from None
    except RecursionError:
        nested_too_deep = True
    if nested_too_deep:
        raise ValueError(
            f"{name} nests arrays and objects more than {MAX_JSON_DEPTH} levels deep "
            "(MAX_JSON_DEPTH)"
        )
    if _NUL_ESCAPE.search(text):
        raise ValueError(f"{name} contains a NUL character, which PostgreSQL cannot store")
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{name} contains an unpaired surrogate, which is not valid text"
        ) from None
    if max_bytes is not None and len(encoded) > max_bytes:
        raise ValueError(
            f"{name} is {len(encoded)} bytes as JSON, over the limit of {max_bytes} "
            f"(max_{name.partition(' ')[0]}_bytes)"
        )
    return text


def nests_deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests arrays and objects (lists, tuples, dicts) more than
    ``limit`` levels deep, found level by level without recursion (a value too deep
    for :func:`json.dumps` is no problem here), stopping at the first level past the
    limit (so a value that contains itself is "too deep" too).

    >>> nests_deeper_than({"a": [1, {"b": 2}]}, 3), nests_deeper_than([[[]]], 2)
    (False, True)
    """
    containers = (dict, list, tuple)
    level: list[Any] = [value] if isinstance(value, containers) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        # keyed by id: a container shared within one level (or a cycle) is walked once
        below: dict[int, Any] = {}
        for container in level:
            for item in container.values() if isinstance(container, dict) else container:
                if isinstance(item, containers):
                    below[id(item)] = item
        level = list(below.values())
    return False


def json_array_text(values: list[Any], *, max_bytes: int | None = None) -> str | None:
    """The JSON array text of ``values`` when every one of them passes the checks of
    :func:`json_text`, found in one encoder pass for a whole batch; ``None`` when one of
    them may not, or when the batch as a whole is over ``max_bytes``: then check each with
    :func:`json_text`, whose error names the value at fault.

    >>> json_array_text([{"n": 1}, [2]])
    '[{"n": 1}, [2]]'
    >>> json_array_text([{"n": float("nan")}]) is None
    True
    """
    if any(value is None or nests_deeper_than(value, MAX_JSON_DEPTH) for value in values):
        return None
    try:
        text = json.dumps(values, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError):
        return None
    if _NUL_ESCAPE.search(text):
        return None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None
    if max_bytes is not None and size > max_bytes:
        return None
    return text


def require_size_limit(name: str, value: Any) -> None:
    """``None`` (no limit) or a positive ``int``.

    >>> require_size_limit("max_payload_bytes", 65536)
    """
    if value is not None:
        require_int(name, value, minimum=1)


def require_timedelta(name: str, value: Any, *, allow_zero: bool) -> timedelta:
    """A ``timedelta`` that is positive (or, with ``allow_zero``, not negative) and at
    most :data:`~sqlalchemy_taskqueue.durations.MAX_DURATION`.

    >>> require_timedelta("window", timedelta(hours=1), allow_zero=False)
    datetime.timedelta(seconds=3600)
    """
    if not isinstance(value, timedelta):
        raise TypeError(f"{name} must be a timedelta, got {value!r}")
    if allow_zero and value < timedelta(0):
        raise ValueError(f"{name} must not be negative, got {value!r}")
    if not allow_zero and value <= timedelta(0):
        raise ValueError(f"{name} must be positive, got {value!r}")
    if value > MAX_DURATION:
        raise ValueError(f"{name} must be at most {MAX_DURATION.days} days, got {value!r}")
    return value


def require_token(lease_token: Any) -> None:
    """``None`` or a ``uuid.UUID`` lease token.

    >>> require_token(None)
    """
    if lease_token is not None and not isinstance(lease_token, uuid.UUID):
        raise TypeError(f"lease_token must be a uuid.UUID, got {lease_token!r}")


def lease_pairs(leases: Iterable[tuple[int, uuid.UUID]]) -> list[tuple[int, uuid.UUID]]:
    """The ``(task_id, lease_token)`` pairs as a list, each one checked.

    Example::

        lease_pairs([(task.id, task.lease_token)])
    """
    pairs = list(leases)
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"leases must be (task_id, lease_token) pairs, got {pair!r}")
        require_lease(*pair)
    return pairs


def require_lease(task_id: Any, lease_token: Any) -> None:
    """A ``(task_id, lease_token)`` pair's parts.

    >>> require_lease(1, uuid.uuid4())
    """
    require_task_id(task_id)
    if not isinstance(lease_token, uuid.UUID):
        raise TypeError(f"lease_token must be a uuid.UUID, got {lease_token!r}")


def lease_duration_argument(value: Any) -> timedelta:
    """A lease length given as a ``timedelta`` or a number of seconds, at least
    :data:`MIN_LEASE_DURATION`.

    >>> lease_duration_argument(90)
    datetime.timedelta(seconds=90)
    >>> lease_duration_argument(0.001)
    Traceback (most recent call last):
        ...
    ValueError: lease_duration must be at least 1 second, got 0.001
    """
    seconds = to_seconds("lease_duration", value)
    if seconds < MIN_LEASE_DURATION.total_seconds():
        raise ValueError(f"lease_duration must be at least 1 second, got {value!r}")
    return timedelta(seconds=seconds)


def require_aware(run_at: Any) -> datetime:
    """A timezone-aware datetime, no more than :data:`RUN_AT_PAST_LIMIT` in the past
    and no more than :data:`~sqlalchemy_taskqueue.durations.MAX_DURATION` ahead (by
    this machine's clock: the limits are far wider than any clock skew).

    Example::

        require_aware(datetime.now(timezone.utc))
    """
    if not isinstance(run_at, datetime):
        raise TypeError(f"run_at must be an aware datetime or a timedelta, got {run_at!r}")
    if run_at.tzinfo is None or run_at.utcoffset() is None:
        raise ValueError(
            f"run_at must be timezone-aware (e.g. datetime.now(timezone.utc)), got {run_at!r}"
        )
    now = datetime.now(timezone.utc)
    if run_at < now - RUN_AT_PAST_LIMIT:
        raise ValueError(
            f"run_at lies more than {RUN_AT_PAST_LIMIT.days} days in the past ({run_at:%Y-%m-%d}); "
            "pass None (or now) to run a task at once"
        )
    if run_at - now > MAX_DURATION:
        raise ValueError(
            f"run_at lies more than {MAX_DURATION.days} days ahead ({run_at:%Y-%m-%d})"
        )
    return run_at


#: Columns the queue manages itself; ``enqueue(**columns)`` may not set them.
MANAGED_COLUMNS = frozenset(
    {
        "id",
        "type",
        "payload",
        "status",
        "progress",
        "priority",
        "run_at",
        "created_at",
        "started_at",
        "completed_at",
        "error_message",
        "retry_count",
        "max_retries",
        "dedupe_key",
        "result",
        "lease_owner",
        "lease_token",
        "lease_expires_at",
        "concurrency_key",
        "concurrency_limit",
        "headers",
    }
)


def require_app_columns(model_name: str, table: Any, columns: Iterable[str]) -> None:
    """``TypeError`` unless every name in ``columns`` is one of the model's own columns
    of ``table`` (not one the queue manages).

    Example::

        require_app_columns("Task", Task.__table__, ["project_id"])
    """
    for name in columns:
        if name in MANAGED_COLUMNS:
            raise TypeError(f"enqueue() cannot set the queue-managed column {name!r}")
        if name not in table.c:
            raise TypeError(
                f"{model_name} has no column {name!r} "
                f"(columns: {', '.join(sorted(table.c.keys()))})"
            )
