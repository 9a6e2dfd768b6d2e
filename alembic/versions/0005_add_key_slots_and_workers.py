"""Per-key concurrency limits and the worker registry for the default ``tasks`` queue
(schema version 4).

Revision ID: 0005_add_key_slots_and_workers
Revises: 0004_add_controls_table
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy_taskqueue.migrations import (
    downgrade_task_table_v4_to_v3,
    upgrade_task_table_v3_to_v4,
)

revision: str = "0005_add_key_slots_and_workers"
down_revision: str | None = "0004_add_controls_table"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    upgrade_task_table_v3_to_v4("tasks")


def downgrade() -> None:
    downgrade_task_table_v4_to_v3("tasks")
