"""Bulk import: a CSV of thousands of rows, imported once, with progress every 100 rows.

* ``request_import`` uses ``enqueue_if_not_exists``: asking twice for the same file while
  the first import is pending or running returns the same task instead of a duplicate.
* Bad rows are logged and skipped; the import still completes and reports them.
* Rows are upserted (``ON CONFLICT DO NOTHING`` on project + SKU), so a retried or
  rescued import never duplicates what an earlier attempt already wrote.

Needs: a clone of the repository and the ``migrations`` extra
(``pip install -e '.[migrations]'``).

Run it from the root of the clone: ``python -m examples.bulk_import``.  It writes a
CSV of 5,000 rows (5 of them broken) to a temporary folder, asks twice for its import
(one task), runs a worker and prints the outcome.  It runs on a database of its own and
a temporary folder, both removed at the end (:mod:`examples.sandbox`).
"""

from __future__ import annotations

import csv
import logging
import random
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue import TaskContext, TaskRepository

from .data_export import pace
from .sandbox import run, sandbox
from .shop import Item, Project, Task, migrate, run_and_show

BULK_IMPORT = "bulk_import"
CHUNK = 100
#: the first price ``Item.price`` (numeric(10, 2)) cannot hold once rounded to cents
PRICE_LIMIT = Decimal("99999999.995")

logger = logging.getLogger("examples.bulk_import")


def request_import(
    session: Session, project_id: int, path: Path, **options: Any
) -> tuple[int, bool]:
    """Enqueue an import of ``path`` unless one is already pending or running.

    ``options`` go into the payload: ``pace`` (demo pacing, seconds per 100 rows) and
    ``flaky`` (fail the first attempt, to show a retry).
    """
    payload = {"project_id": project_id, "file": str(path), **options}
    return TaskRepository(session, Task).enqueue_if_not_exists(BULK_IMPORT, payload)


def write_sample_csv(path: Path, rows: int, *, bad_every: int = 0, seed: int = 7) -> int:
    """Write ``rows`` item rows (every ``bad_every``-th one broken); returns the bad count."""
    rng = random.Random(seed)
    bad = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "name", "price"])
        for n in range(1, rows + 1):
            if bad_every and n % bad_every == 0:
                writer.writerow([f"SKU-{n:06d}", f"Broken {n}", "not-a-price"])
                bad += 1
            else:
                writer.writerow([f"SKU-{n:06d}", f"Item {n}", f"{rng.uniform(1, 500):.2f}"])
    return bad


def parse_row(row: dict[str, str]) -> dict[str, Any]:
    """One CSV row as item values; ``ValueError`` for a bad row."""
    sku, name = (row.get("sku") or "").strip(), (row.get("name") or "").strip()
    if not sku or not name:
        raise ValueError("sku and name are required")
    try:
        price = Decimal(row.get("price") or "")
    except InvalidOperation:
        raise ValueError(f"price {row.get('price')!r} is not a number") from None
    if not price.is_finite():  # NaN would raise in the comparisons below
        raise ValueError(f"price {row.get('price')!r} is not a number")
    if price < 0:
        raise ValueError(f"price {price} is negative")
    if price >= PRICE_LIMIT:  # one such row would fail the whole chunk's INSERT
        raise ValueError(f"price {price} is too large")
    return {"sku": sku, "name": name, "price": price}


def make_import_handler(engine: Engine) -> Any:
    """The handler, bound to the app's database."""

    def import_items(task: Any, ctx: TaskContext) -> dict[str, Any]:
        project_id = int(ctx.payload["project_id"])
        if ctx.payload.get("flaky") and ctx.attempt == 1:
            # a stand-in for a transient outage; the retry succeeds
            raise ConnectionError("storage did not answer (simulated); will retry")

        ctx.update_progress(10)  # "download"
        with Path(ctx.payload["file"]).open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        ctx.update_progress(20)  # parsed

        with Session(engine) as session:
            if session.get(Project, project_id) is None:
                raise LookupError(f"project {project_id} does not exist")

        total, imported, skipped, bad_lines = len(rows), 0, 0, []
        for start in range(0, total, CHUNK):
            ctx.raise_if_stopping()
            chunk = []
            for line, row in enumerate(rows[start : start + CHUNK], start=start + 2):
                try:
                    chunk.append({"project_id": project_id, **parse_row(row)})
                except ValueError as exc:
                    skipped += 1
                    bad_lines.append(line)
                    logger.warning("import.bad_row task=%d line=%d error=%s", task.id, line, exc)
            if chunk:
                with engine.begin() as connection:
                    stmt = (
                        insert(Item)
                        .values(chunk)
                        .on_conflict_do_nothing(index_elements=["project_id", "sku"])
                    )
                    connection.execute(stmt)
                imported += len(chunk)
            done = min(start + CHUNK, total)
            ctx.update_progress(20 + 70 * done // max(total, 1))
            pace(ctx)
        ctx.update_progress(95)
        return {
            "rows": total,
            "imported": imported,
            "skipped": skipped,
            "bad_lines": bad_lines[:20],
        }

    return import_items


def main(argv: list[str]) -> int:
    """Import a sample CSV with a worker; 0 when the import completed."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    with sandbox("taskqueue_example_import", migrate) as box:
        box.announce("examples.bulk_import")
        path = box.folder / "items.csv"
        bad = write_sample_csv(path, 5000, bad_every=997)
        with Session(box.engine) as session, session.begin():
            project = Project(name="import-demo")
            session.add(project)
            session.flush()
            task_id, created = request_import(session, project.id, path)
            again, created_again = request_import(session, project.id, path)
        print(
            f"import task {task_id} (created={created}); "
            f"asking again gave {again} (created={created_again})"
        )
        handlers = {BULK_IMPORT: make_import_handler(box.engine)}
        task = run_and_show(box.engine, handlers, task_id, note=f"({bad} bad rows in the file) ")
    return 0 if task.result is not None else 1


if __name__ == "__main__":
    run(main)
