"""The getting-started tour (docs/tutorial/getting-started.md) works exactly as written.

The page is read, not copied: its ``console`` blocks are typed into a shell and its
blocks with a ``title="path"`` are written to that file, in order, in an empty
directory, against a database of the test's own, with the Python (and ``alembic``,
``taskqueue``) of the test environment first on ``PATH``.  The page says in HTML
comments what the test does differently from a reader, and the test reads those:

* ``<!-- tour: skip "pip install" (why) -->``: commands starting so are not run;
* ``<!-- tour: the test sets NAME ... -->``: ``export NAME=...`` keeps the test's value;
* ``<!-- tour: replace "TEXT" in PATH -->``: the next block replaces TEXT in PATH;
* ``<!-- tour: variant NAME -->`` ... ``<!-- tour: end variant -->``: alternatives
  (each run of the tour takes one variant and skips the others' blocks).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TOUR = Path(__file__).resolve().parents[1] / "docs" / "tutorial" / "getting-started.md"

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>\w*)(?P<info>.*)$")
_TITLE = re.compile(r'title="(?P<path>[^"]+)"')
_DIRECTIVE = re.compile(r"<!-- tour: (?P<text>.*?) -->")


@dataclass
class Step:
    """One thing a reader does: run a command, write a file, or edit one."""

    command: str | None = None
    path: str | None = None
    content: str = ""
    replace: str | None = None  # the text the content replaces in ``path``


@dataclass
class Tour:
    steps: list[Step] = field(default_factory=list)
    skipped_prefixes: list[str] = field(default_factory=list)
    test_sets: set[str] = field(default_factory=set)
    variants: set[str] = field(default_factory=set)


def _commands(block: str) -> list[str]:
    commands: list[str] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            commands.append(line[2:])
        elif commands and commands[-1].endswith("\\"):
            commands[-1] = commands[-1][:-1] + line.strip()
    return commands


def read_tour(text: str, variant: str) -> Tour:
    """The steps of the page for one ``variant`` of its alternatives."""
    tour = Tour()
    current_variant: str | None = None
    pending_replace: tuple[str, str] | None = None
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        for directive in _DIRECTIVE.finditer(line):
            words = directive["text"]
            if match := re.fullmatch(r'skip "(.+?)" \(.+\)', words):
                tour.skipped_prefixes.append(match[1])
            elif match := re.match(r"the test sets (\w+)", words):
                tour.test_sets.add(match[1])
            elif match := re.fullmatch(r'replace "(.+?)" in (\S+)', words):
                pending_replace = (match[1], match[2])
            elif match := re.fullmatch(r"variant (\w+)", words):
                current_variant = match[1]
                tour.variants.add(current_variant)
            elif words == "end variant":
                current_variant = None
            else:
                raise AssertionError(f"unknown tour directive: {words!r}")
        fence = _FENCE.match(line)
        if not fence:
            continue
        indent, body = fence["indent"], []
        while not lines[index].startswith(f"{indent}```"):
            body.append(lines[index][len(indent) :])
            index += 1
        index += 1
        if current_variant not in (None, variant):
            continue
        block = "\n".join(body) + "\n"
        title = _TITLE.search(fence["info"])
        if fence["lang"] == "console":
            tour.steps.extend(Step(command=command) for command in _commands(block))
        elif title:
            replace = None
            if pending_replace is not None:
                replace, replaced_path = pending_replace
                assert replaced_path == title["path"], "a replace directive names its block"
                pending_replace = None
            tour.steps.append(Step(path=title["path"], content=block, replace=replace))
    return tour


@dataclass
class Reader:
    """Follows the tour in ``directory``, as a person at a shell would."""

    directory: Path
    env: dict[str, str]
    tour: Tour
    outputs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)

    def follow(self) -> None:
        for step in self.tour.steps:
            if step.command is not None:
                self.run(step.command)
            else:
                self.write(step)

    def write(self, step: Step) -> None:
        assert step.path is not None
        path = self.directory / step.path
        if step.replace is None:
            path.write_text(step.content)
            return
        text = path.read_text()
        assert text.count(step.replace) == 1, f"{step.path} has {step.replace!r} once"
        path.write_text(text.replace(step.replace, step.content.rstrip("\n")))

    def run(self, command: str) -> None:
        if any(command.startswith(prefix) for prefix in self.tour.skipped_prefixes):
            return
        if command.startswith("export "):
            name, _, value = command.removeprefix("export ").partition("=")
            if name not in self.tour.test_sets:
                self.env[name] = shlex.split(value)[0]
            return
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (
            f"`{command}` exited {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
        self.outputs[command] = done


def tour_env(database_url: str) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env["TASKQUEUE_DATABASE_URL"] = database_url
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["COLUMNS"] = "200"  # the tables of `taskqueue stats` as a wide terminal shows them
    return env


def test_the_page_declares_what_the_test_does_differently() -> None:
    tour = read_tour(TOUR.read_text(), "helper")
    assert tour.skipped_prefixes == ["pip install"]
    assert tour.test_sets == {"TASKQUEUE_DATABASE_URL"}
    assert tour.variants == {"helper", "autogenerate"}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["helper", "autogenerate"])
def test_the_tour_runs_as_written(variant: str, empty_database_url: str) -> None:
    tour = read_tour(TOUR.read_text(), variant)
    with tempfile.TemporaryDirectory(prefix="taskqueue-tour-") as directory:
        reader = Reader(Path(directory), tour_env(empty_database_url), tour)
        reader.follow()
        revisions = list((Path(directory) / "migrations" / "versions").glob("*.py"))

    out = reader.outputs
    assert len(revisions) == 1
    assert "No new upgrade operations detected" in out["alembic check"].stdout
    assert out["python enqueue.py"].stdout == "enqueued task 1\n"
    worker_log = out["taskqueue worker myapp.tasks:registry --until-empty"].stderr
    assert "task.completed" in worker_log
    assert "task.failed" not in worker_log
    assert "task.retried" not in worker_log
    stats = out["taskqueue stats"].stdout
    data_export = next(line for line in stats.splitlines() if "data_export" in line)
    # pending, in_progress, completed, failed, cancelled
    assert re.findall(r"\d+", data_export)[:5] == ["0", "0", "1", "0", "0"]
    shown = out["taskqueue show 1"].stdout
    assert "completed" in shown
    assert '"rows": 2' in shown


def test_the_autogenerated_revision_imports_nothing_of_the_library(
    empty_database_url: str,
) -> None:
    tour = read_tour(TOUR.read_text(), "autogenerate")
    until_revision = [step for step in tour.steps if step.command != "alembic upgrade head"]
    cut = next(
        index
        for index, step in enumerate(until_revision)
        if step.command and "--autogenerate" in step.command
    )
    tour.steps = until_revision[: cut + 1]
    with tempfile.TemporaryDirectory(prefix="taskqueue-tour-") as directory:
        Reader(Path(directory), tour_env(empty_database_url), tour).follow()
        (revision,) = (Path(directory) / "migrations" / "versions").glob("*.py")
        text = revision.read_text()

    assert "sqlalchemy_taskqueue" not in text
    assert "sa.Column('status', sa.Text()" in text
    assert "sa.Column('payload', sa.JSON(none_as_null=True).with_variant(" in text


README = TOUR.parents[2] / "README.md"


def test_the_readme_quick_start_runs(empty_database_url: str) -> None:
    (quick_start,) = re.findall(
        r"## Quick start\n\n```python\n(.*?)```", README.read_text(), flags=re.DOTALL
    )
    url = re.search(r'create_engine\("([^"]+)"\)', quick_start)
    assert url is not None
    script = quick_start.replace(url[1], empty_database_url) + (
        "\nwith Session() as session:\n    print(session.query(Task.status, Task.result).one())\n"
    )
    with tempfile.TemporaryDirectory(prefix="taskqueue-readme-") as directory:
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=directory,
            env=tour_env(empty_database_url),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "(<TaskStatus.COMPLETED: 'completed'>, {'sent_to': 'ada@example.com'})\n"
