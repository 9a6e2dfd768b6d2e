"""Periodic schedules for the default ``tasks`` queue (schema version 2).

Revision ID: 0003_add_schedules_table
Revises: 0002_tune_tasks_table
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy_taskqueue.migrations import (
    downgrade_task_table_v2_to_v1,
    upgrade_task_table_v1_to_v2,
)

revision: str = "0003_add_schedules_table"
down_revision: str | None = "0002_tune_tasks_table"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    upgrade_task_table_v1_to_v2("tasks")


def downgrade() -> None:
    downgrade_task_table_v2_to_v1("tasks")
