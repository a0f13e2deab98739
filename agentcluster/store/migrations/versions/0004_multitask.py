"""multitask strategies: a turn records the strategy its message was sent with, and a message
rolled back by a later one stays stored but is hidden from the model

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.add_column(
            sa.Column("strategy", sa.String(length=16), nullable=False, server_default="enqueue")
        )
    with op.batch_alter_table("messages") as batch:
        batch.add_column(
            sa.Column("rolled_back", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("rolled_back")
    with op.batch_alter_table("turns") as batch:
        batch.drop_column("strategy")
