"""Storage parameters for the default ``tasks`` queue table (fillfactor, autovacuum).

Revision ID: 0002_tune_tasks_table
Revises: 0001_create_tasks_table
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy_taskqueue.migrations import tune_task_table_v1, untune_task_table_v1

revision: str = "0002_tune_tasks_table"
down_revision: str | None = "0001_create_tasks_table"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    tune_task_table_v1("tasks")


def downgrade() -> None:
    untune_task_table_v1("tasks")
