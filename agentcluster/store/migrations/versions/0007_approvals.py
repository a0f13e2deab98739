"""approvals: a tool call may wait for a person (its policy reason, expiry and decision), and a
turn may be awaiting_approval (a wider status column)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 08:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.alter_column("status", existing_type=sa.String(length=16), type_=sa.String(length=32))
    with op.batch_alter_table("tool_calls") as batch:
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("approval", sa.JSON(), nullable=True))
        batch.create_index("ix_tool_calls_status_expires", ["status", "expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tool_calls") as batch:
        batch.drop_index("ix_tool_calls_status_expires")
        batch.drop_column("approval")
        batch.drop_column("expires_at")
        batch.drop_column("reason")
    with op.batch_alter_table("turns") as batch:
        batch.alter_column("status", existing_type=sa.String(length=32), type_=sa.String(length=16))
