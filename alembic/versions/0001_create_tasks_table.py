"""Create the default ``tasks`` queue table (schema version 1).

Revision ID: 0001_create_tasks_table
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy_taskqueue.migrations import create_task_table_v1, drop_task_table_v1

revision: str = "0001_create_tasks_table"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_task_table_v1("tasks")


def downgrade() -> None:
    drop_task_table_v1("tasks")
