"""The ``headers`` column of the default ``tasks`` queue, carrying each task's trace
context (schema version 5).

Revision ID: 0006_add_task_headers
Revises: 0005_add_key_slots_and_workers
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy_taskqueue.migrations import (
    downgrade_task_table_v5_to_v4,
    upgrade_task_table_v4_to_v5,
)

revision: str = "0006_add_task_headers"
down_revision: str | None = "0005_add_key_slots_and_workers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    upgrade_task_table_v4_to_v5("tasks")


def downgrade() -> None:
    downgrade_task_table_v5_to_v4("tasks")
