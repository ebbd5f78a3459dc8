"""weird results: findings, advertisers.auto_carry_fixes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 04:45:18.549768
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('findings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('detector', sa.String(length=32), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('advertiser_id', sa.Integer(), nullable=True),
    sa.Column('scrape_id', sa.Integer(), nullable=True),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('explanation', sa.Text(), nullable=False),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('state_reason', sa.Text(), nullable=True),
    sa.Column('state_by', sa.String(length=200), nullable=True),
    sa.Column('state_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('settled_fix_id', sa.Integer(), nullable=True),
    sa.Column('conflicting', sa.Boolean(), nullable=False),
    sa.Column('detected_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['advertiser_id'], ['advertisers.id'], name=op.f('fk_findings_advertiser_id_advertisers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['scrape_id'], ['scrapes.id'], name=op.f('fk_findings_scrape_id_scrapes'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_findings')),
    sa.UniqueConstraint('detector', 'subject', name=op.f('uq_findings_detector'))
    )
    with op.batch_alter_table('findings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_findings_advertiser_id'), ['advertiser_id'], unique=False)
        batch_op.create_index('ix_findings_state_severity', ['state', 'severity'], unique=False)

    # Existing advertisers keep today's behaviour: fixes are carried over only on request.
    with op.batch_alter_table('advertisers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('auto_carry_fixes', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('advertisers', schema=None) as batch_op:
        batch_op.drop_column('auto_carry_fixes')

    with op.batch_alter_table('findings', schema=None) as batch_op:
        batch_op.drop_index('ix_findings_state_severity')
        batch_op.drop_index(batch_op.f('ix_findings_advertiser_id'))

    op.drop_table('findings')
