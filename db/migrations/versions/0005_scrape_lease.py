"""scrape lease: scrapes.heartbeat_at

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 09:00:00.000000

A running scrape bumps ``heartbeat_at`` at its start and after every stored batch; one whose
heartbeat is older than the lease (``db.scrapes.LEASE``) was abandoned (its process died) and is
marked failed instead of blocking relaunches. Existing rows get their ``started_at``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('scrapes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE scrapes SET heartbeat_at = started_at")


def downgrade() -> None:
    with op.batch_alter_table('scrapes', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
