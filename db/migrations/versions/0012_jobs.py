"""jobs: long work run on a task queue, with its progress

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08 09:00:00.000000

* ``jobs``: one row per background job (a dataset build, later a training): its kind, state
  (queued, running, done, failed), who asked and when, when it started and finished, the current
  phase and its progress (done of total), the parameters and the result as JSON, the error, and
  the worker's heartbeat (a running job silent for ``db.jobs.LEASE`` reads as failed).

A new table only: nothing else changes, on SQLite or PostgreSQL.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('requested_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('progress_done', sa.Integer(), nullable=False),
    sa.Column('progress_total', sa.Integer(), nullable=True),
    sa.Column('phase', sa.String(length=200), nullable=True),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    op.create_index('ix_jobs_kind_id', 'jobs', ['kind', 'id'], unique=False)
    op.create_index('ix_jobs_state', 'jobs', ['state'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_jobs_state', table_name='jobs')
    op.drop_index('ix_jobs_kind_id', table_name='jobs')
    op.drop_table('jobs')
