"""datasets: dataset versions and their rows, and the archive queue of fixed images

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 09:00:00.000000

* ``dataset_versions``: one version of the training set: its parent, recipe (JSON), inputs (the
  fix window or the generator), state (draft, frozen), author, times, the manifest's SHA-256 and
  its counts. A frozen version never changes (enforced in ``db.datasets``).
* ``dataset_rows``: the manifest, one row per image and version (unique per version and sha256).
* ``archive_entries``: images whose bytes the content-addressed archive must keep, queued by the
  fix that made them training candidates and stored later (a failed fetch stays pending).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('dataset_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('parent_id', sa.Integer(), nullable=True),
    sa.Column('recipe', sa.JSON(), nullable=False),
    sa.Column('inputs', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('frozen_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['parent_id'], ['dataset_versions.id'], name=op.f('fk_dataset_versions_parent_id_dataset_versions'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset_versions')),
    sa.UniqueConstraint('number', name=op.f('uq_dataset_versions_number'))
    )
    op.create_index(op.f('ix_dataset_versions_parent_id'), 'dataset_versions', ['parent_id'], unique=False)
    op.create_table('dataset_rows',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('image_type', sa.String(length=32), nullable=False),
    sa.Column('color', sa.String(length=32), nullable=True),
    sa.Column('origin', sa.Text(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('split', sa.String(length=8), nullable=True),
    sa.Column('advertiser', sa.String(length=200), nullable=True),
    sa.Column('page_url', sa.Text(), nullable=True),
    sa.Column('cluster', sa.Integer(), nullable=True),
    sa.Column('exclusion', sa.Text(), nullable=True),
    sa.Column('phash', sa.String(length=16), nullable=True),
    sa.Column('crop', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['version_id'], ['dataset_versions.id'], name=op.f('fk_dataset_rows_version_id_dataset_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset_rows'))
    )
    op.create_index('ix_dataset_rows_version_sha256', 'dataset_rows', ['version_id', 'sha256'], unique=True)
    op.create_index('ix_dataset_rows_sha256', 'dataset_rows', ['sha256'], unique=False)
    op.create_table('archive_entries',
    sa.Column('image_key', sa.String(length=64), nullable=False),
    sa.Column('image_url', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('stored_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('image_key', name=op.f('pk_archive_entries'))
    )
    op.create_index(op.f('ix_archive_entries_sha256'), 'archive_entries', ['sha256'], unique=False)
    op.create_index(op.f('ix_archive_entries_state'), 'archive_entries', ['state'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_archive_entries_state'), table_name='archive_entries')
    op.drop_index(op.f('ix_archive_entries_sha256'), table_name='archive_entries')
    op.drop_table('archive_entries')
    op.drop_index('ix_dataset_rows_sha256', table_name='dataset_rows')
    op.drop_index('ix_dataset_rows_version_sha256', table_name='dataset_rows')
    op.drop_table('dataset_rows')
    op.drop_index(op.f('ix_dataset_versions_parent_id'), table_name='dataset_versions')
    op.drop_table('dataset_versions')
