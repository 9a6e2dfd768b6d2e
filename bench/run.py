"""Benchmark: sqlalchemy-taskqueue against a hand-written psycopg2 queue, same run.

Every figure of ours is printed next to a baseline measured in the same run on the same
database (see ``baseline.py``), and as a ratio to it; the rival queues that are installed
(pgqueuer and procrastinate, the ``bench`` extra) are measured too, each with its own API
(``pgqueuer_rival.py``, ``procrastinate_rival.py``).  The targets are
those of the project's performance issue.  Every scenario runs ``--repeat`` times (3 by
default) and the table shows the median of each column.  Output: a table, then one JSON
line per figure.

Run: ``make bench`` (server from ``TASKQUEUE_BENCH_DATABASE_URL`` /
``TASKQUEUE_DATABASE_URL``, else local, else embedded), or for example
``python bench/run.py --tasks 5000 --finished-rows 100000 --repeat 1`` for a quicker run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).parent))
import baseline
import ours
import pgqueuer_rival
import procrastinate_rival
from sqlalchemy import Engine, create_engine, text

from sqlalchemy_taskqueue.contrib.testing import (
    DATABASE_URL_ENV,
    mask_password,
    resolve_database_url,
    throwaway_database,
)

# The rival queues, each measured through its own API when installed; a column each.
# Every module offers available, install, reset, enqueue_one_by_one, enqueue_bulk, fill,
# drain_defaults, drain_best, wake_latencies and SETTINGS.
RIVALS: dict[str, ModuleType] = {
    "pgqueuer": pgqueuer_rival,
    "procrastinate": procrastinate_rival,
}


@dataclass
class Figure:
    """One measured figure: ours, the hand-written baseline and the rivals measured."""

    scenario: str
    unit: str
    baseline: float | None
    ours: float
    higher_is_better: bool = True
    target: str = ""
    rivals: dict[str, float | None] = field(default_factory=dict)
    # the same work through SQLAlchemy alone, no queue code (where measured)
    floor: float | None = None
    # the same work through a Session with no SQLAlchemy statement execution at all
    session_floor: float | None = None

    def ratio_to(self, other: float | None) -> float | None:
        """How many times better ours is than ``other`` (above 1: ours is better)."""
        if not other or not self.ours:
            return None
        return self.ours / other if self.higher_is_better else other / self.ours

    @property
    def ratio(self) -> float | None:
        return self.ratio_to(self.baseline)

    def row(self) -> str:
        def number(value: float | None) -> str:
            return "-" if value is None else f"{value:,.1f}"

        def times(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}x"

        theirs = [self.rivals.get(name) for name in RIVALS]
        cells = [
            self.scenario,
            self.unit,
            number(self.baseline),
            *(number(value) for value in theirs),
            number(self.ours),
            times(self.ratio),
            *(times(self.ratio_to(value)) for value in theirs),
            self.target,
        ]
        return "| " + " | ".join(cells) + " |"

    def record(self) -> dict[str, object]:
        """The JSON line: every field, one key per rival and the ratios."""
        fields = asdict(self)
        del fields["rivals"]
        theirs = {name: self.rivals.get(name) for name in RIVALS}
        return {
            **fields,
            **theirs,
            "ratio": self.ratio,
            **{f"ratio_to_{name}": self.ratio_to(value) for name, value in theirs.items()},
            "ratio_to_floor": self.ratio_to(self.floor),
            "ratio_to_session_floor": self.ratio_to(self.session_floor),
        }


def percentile(ordered: list[float], quantile: float) -> float:
    """The ``quantile`` of an ascending list (nearest rank)."""
    return ordered[min(int(quantile * len(ordered)), len(ordered) - 1)]


def describe(engine: Engine) -> str:
    with engine.connect() as connection:
        settings = {
            name: connection.scalar(text(f"SHOW {name}"))
            for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
        }
    return (
        f"{os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}; PostgreSQL {settings['server_version']} "
        f"(fsync={settings['fsync']}, synchronous_commit={settings['synchronous_commit']}, "
        f"shared_buffers={settings['shared_buffers']})"
    )


def measured_rivals(url: str, args: argparse.Namespace) -> dict[str, ModuleType]:
    """The rivals to measure, installed into the benchmark's database."""
    measured = {
        name: module for name, module in RIVALS.items() if module.available() and not args.no_rivals
    }
    for module in measured.values():
        module.install(url)
    return measured


def measure(
    url: str, engine: Engine, args: argparse.Namespace, measured: dict[str, ModuleType]
) -> list[Figure]:
    figures: list[Figure] = []
    tasks = args.tasks

    def add(figure: Figure) -> None:
        figures.append(figure)
        print(f"  {figure.scenario}: {figure.ours:,.1f} {figure.unit}", file=sys.stderr)

    def rivals(measure: Callable[[ModuleType], float]) -> dict[str, float | None]:
        """``measure(module)`` for every rival measured, each on its emptied tables."""
        values: dict[str, float | None] = {}
        for name, module in measured.items():
            module.reset(url)
            values[name] = measure(module)
        return values

    def fill(count: int) -> None:
        """``count`` pending tasks in our table (the baseline's too), then quiet."""
        ours.fill(engine, count)
        baseline.quiesce(url)

    def drain(best: bool) -> Callable[[ModuleType], float]:
        def measure(module: ModuleType) -> float:
            module.fill(url, tasks)
            baseline.quiesce(url)
            if best:
                return float(module.drain_best(url, tasks, args.processes))
            return float(module.drain_defaults(url, tasks))

        return measure

    one_by_one = tasks // 10
    ours.reset(engine)
    hand = baseline.enqueue_one_by_one(url, one_by_one)
    ours.reset(engine)
    floor = ours.enqueue_sqlalchemy_alone(engine, one_by_one)
    ours.reset(engine)
    session_floor = ours.enqueue_session_alone(engine, one_by_one)
    ours.reset(engine)
    add(
        Figure(
            "enqueue, one per transaction",
            "tasks/s",
            hand,
            ours.enqueue_one_by_one(engine, one_by_one),
            target=">= 0.9x hand-written",
            rivals=rivals(lambda rival: rival.enqueue_one_by_one(url, one_by_one)),
            floor=floor,
            session_floor=session_floor,
        )
    )
    ours.reset(engine)
    hand = baseline.enqueue_bulk(url, tasks, 1000)
    ours.reset(engine)
    add(
        Figure(
            "enqueue, bulk of 1,000",
            "tasks/s",
            hand,
            ours.enqueue_bulk(engine, tasks, 1000),
            target=">= 0.8x hand-written, ahead of pgqueuer",
            rivals=rivals(lambda rival: rival.enqueue_bulk(url, tasks, 1000)),
        )
    )

    fill(tasks)
    hand_one = baseline.drain(url, tasks, per_statement=1, processes=1)
    fill(tasks)
    add(
        Figure(
            "drain, one process, default settings",
            "tasks/s",
            hand_one,
            ours.drain(url, tasks, processes=1),
            target=">= 2x pgqueuer (its defaults: batch 10)",
            rivals=rivals(drain(best=False)),
        )
    )
    fill(tasks)
    add(
        Figure(
            "drain, one process, default settings, an every-second schedule registered",
            "tasks/s",
            hand_one,
            ours.drain(url, tasks, processes=1, scheduled=True),
            target="within noise of the row above (firing costs a claim nothing)",
        )
    )
    fill(tasks)
    ours.rate_limit(engine, 10_000_000)  # far above the drain rate: the cost, not the limit
    add(
        Figure(
            "drain, one process, default settings, a rate limit above the drain rate",
            "tasks/s",
            hand_one,
            ours.drain(url, tasks, processes=1),
            target=">= 0.7x the plain drain (the row above the schedule's)",
        )
    )
    ours.rate_limit(engine, None)
    ours.fill(engine, tasks, keys=100)
    baseline.quiesce(url)
    add(
        Figure(
            "drain, one process, default settings, every task under one of 100 "
            "concurrency keys of limit 1",
            "tasks/s",
            hand_one,
            ours.drain(url, tasks, processes=1),
            target=">= 0.7x the plain drain (the row above the schedule's)",
        )
    )
    fill(tasks)
    hand_batch = baseline.drain(url, tasks, per_statement=100, processes=args.processes)
    best = {"concurrency": args.concurrency, "prefetch": args.prefetch}
    fill(tasks)
    add(
        Figure(
            f"drain, best: {args.processes} processes x {args.concurrency} slots, "
            f"prefetch {args.prefetch} (baseline: 100 per statement)",
            "tasks/s",
            hand_batch,
            ours.drain(url, tasks, processes=args.processes, **best),
            target=">= 0.4x hand-written, >= 1.2x pgqueuer (batch 100)",
            rivals=rivals(drain(best=True)),
        )
    )

    def wake_latencies(module: ModuleType, target: object) -> list[float]:
        """Sorted wake-up latencies of ``module`` on ``target`` (our engine, or the URL)."""
        baseline.quiesce(url)
        return sorted(module.wake_latencies(target, args.samples, 0.02))

    latencies = wake_latencies(ours, engine)
    their_latencies = {name: wake_latencies(module, url) for name, module in measured.items()}
    for label, quantile, target in (
        ("p50", 0.50, "<= 2 ms, ahead of pgqueuer"),
        ("p95", 0.95, ""),
        ("p99", 0.99, "<= 5 ms, ahead of pgqueuer"),
    ):
        add(
            Figure(
                f"enqueue-to-start latency, idle worker, {label}",
                "ms",
                None,
                percentile(latencies, quantile) * 1000,
                False,
                target,
                rivals={
                    name: percentile(values, quantile) * 1000
                    for name, values in their_latencies.items()
                },
            )
        )

    claims = 200
    ours.fill(engine, claims)
    empty = ours.claim_latency(engine, claims) * 1000
    add(Figure("claim latency, (nearly) empty table", "ms", None, empty, False))
    ours.fill(engine, claims)
    ours.add_finished_rows(engine, args.finished_rows)
    plan = ours.claim_plan(engine)
    history = ours.claim_latency(engine, claims) * 1000
    add(
        Figure(
            f"claim latency, {args.finished_rows:,} finished rows",
            "ms",
            empty,
            history,
            False,
            ">= 0.83x (at most 1.2x the empty table's time)",
        )
    )
    ours.fill(engine, 100_000)
    backlog = ours.claim_latency(engine, claims) * 1000
    add(Figure("claim latency, 100,000 pending rows", "ms", empty, backlog, False))
    ours.fill(engine, 100_000, keys=100)
    keyed_plan = ours.claim_plan(engine, keyed=True)

    ours.fill(engine, 4)
    with engine.connect() as connection:
        ids = list(connection.scalars(text("SELECT id FROM bench_tasks")))
    hand = baseline.progress_updates(url, ids, 500)
    add(
        Figure(
            "progress updates, 4 running handlers",
            "writes/s",
            hand,
            ours.progress_updates(engine, 4, 500),
        )
    )
    print(f"\nclaim plan with {args.finished_rows:,} finished rows:\n{plan}")
    print(f"\nkeyed claim plan, 100,000 pending tasks over 100 keys:\n{keyed_plan}")
    return figures


def median_figure(runs: tuple[Figure, ...]) -> Figure:
    """One scenario's figure from repeated runs: the median of every column."""

    def middle(values: list[float | None]) -> float | None:
        known = [value for value in values if value is not None]
        return statistics.median(known) if known else None

    first = runs[0]
    rivals = {name: middle([run.rivals.get(name) for run in runs]) for name in first.rivals}
    return replace(
        first,
        baseline=middle([run.baseline for run in runs]),
        ours=statistics.median(run.ours for run in runs),
        rivals=rivals,
        floor=middle([run.floor for run in runs]),
        session_floor=middle([run.session_floor for run in runs]),
    )


def main() -> None:
    # the figures only: no worker's start, stop or per-task line (each costs the drain)
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per drain")
    parser.add_argument("--processes", type=int, default=2, help="processes, best drain")
    # best for no-op handlers on the 2-core development machine: two slots with a deep
    # prefetch beat eight slots by about a quarter (more threads, same work)
    parser.add_argument("--concurrency", type=int, default=2, help="slots, best drain")
    parser.add_argument("--prefetch", type=int, default=400, help="prefetch, best drain")
    parser.add_argument("--samples", type=int, default=200, help="latency samples")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of every scenario; the table shows medians"
    )
    parser.add_argument(
        "--finished-rows", type=int, default=1_000_000, help="history for the claim test"
    )
    parser.add_argument(
        "--no-rivals",
        action="store_true",
        help="skip the rivals (" + ", ".join(RIVALS) + ") even when they are installed",
    )
    args = parser.parse_args()
    for name in ("tasks", "processes", "concurrency", "samples", "finished_rows", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.prefetch < 0:
        parser.error("--prefetch must not be negative")

    server_url = resolve_database_url("TASKQUEUE_BENCH_DATABASE_URL", DATABASE_URL_ENV)
    with throwaway_database(server_url, "taskqueue_bench") as url:
        engine = create_engine(url, pool_size=12)
        try:
            ours.Base.metadata.create_all(engine)
            print(f"server: {mask_password(server_url)}")
            print(f"machine: {describe(engine)}")
            measured = measured_rivals(url, args)
            runs = []
            for run in range(1, args.repeat + 1):
                print(f"run {run} of {args.repeat}", file=sys.stderr)
                runs.append(measure(url, engine, args, measured))
            figures = [median_figure(same) for same in zip(*runs, strict=True)]
        finally:
            engine.dispose()
    print()
    header = [
        "scenario",
        "unit",
        "hand-written psycopg2",
        *RIVALS,
        "sqlalchemy-taskqueue",
        "vs hand-written",
        *(f"vs {name}" for name in RIVALS),
        "target",
    ]
    print("| " + " | ".join(header) + " |")
    print("|---|---|" + "---:|" * (len(header) - 3) + "---|")
    for figure in figures:
        print(figure.row())
    for figure in figures:
        if figure.floor is not None and figure.ratio is not None:
            print(
                f"\n{figure.scenario}, SQLAlchemy alone: the hand-written INSERT as bare SQL "
                f"through a new Session per transaction runs at {figure.floor:,.1f} "
                f"{figure.unit}, {figure.floor / figure.baseline:.2f}x the hand-written loop; "
                f"sqlalchemy-taskqueue runs at {figure.ratio_to(figure.floor):.2f}x that"
            )
        if figure.session_floor is not None and figure.baseline:
            print(
                f"{figure.scenario}, the Session alone: a new Session per transaction "
                "handing the same INSERT straight to psycopg2 on its own connection (no "
                f"SQLAlchemy statement execution) runs at {figure.session_floor:,.1f} "
                f"{figure.unit}, {figure.session_floor / figure.baseline:.2f}x the "
                "hand-written loop"
            )
    print(
        "\nratio: ours relative to the baseline column, above 1 is better (throughput: "
        "ours / baseline; latency: baseline / ours)"
    )
    for name, module in RIVALS.items():
        if not module.available():
            print(f"{name}: not installed")
        elif args.no_rivals:
            print(f"{name}: not measured (--no-rivals)")
        else:
            print(f"{name}: {module.SETTINGS}; {args.processes} processes in the best drain")
    print()
    for figure in figures:
        print(json.dumps(figure.record()))


if __name__ == "__main__":
    main()
