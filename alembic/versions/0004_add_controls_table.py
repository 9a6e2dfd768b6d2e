"""Pauses and rate limits for the default ``tasks`` queue (schema version 3).

Revision ID: 0004_add_controls_table
Revises: 0003_add_schedules_table
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy_taskqueue.migrations import (
    downgrade_task_table_v3_to_v2,
    upgrade_task_table_v2_to_v3,
)

revision: str = "0004_add_controls_table"
down_revision: str | None = "0003_add_schedules_table"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    upgrade_task_table_v2_to_v3("tasks")


def downgrade() -> None:
    downgrade_task_table_v3_to_v2("tasks")
