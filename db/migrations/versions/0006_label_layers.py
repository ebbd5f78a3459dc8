"""label layers: fix uids and scopes, item label sources, sync state

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 12:10:00.000000

* ``manual_fixes.uid``: a globally unique id (what the ML cache remembers), so that a database
  restored from a backup never reuses an id the cache has seen; existing rows get a fresh one.
* ``manual_fixes.scope``: ``team`` (an analyst's fix, for every advertiser showing the image) or
  ``advertiser`` (that advertiser's override only); existing advertiser fixes become overrides.
* ``sitemap_items.image_type_source`` / ``color_source``: where each current value comes from.
* ``sync_state``: e.g. the ML cache generation the app last filled.

Columns are added with plain ALTER TABLE (no table copy), so the chart triggers of migration 0004
on ``sitemap_items`` stay in place on SQLite.
"""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('manual_fixes', sa.Column('uid', sa.String(length=32), nullable=True))
    op.add_column('manual_fixes', sa.Column('scope', sa.String(length=16), nullable=False, server_default='team'))
    connection = op.get_bind()
    ids = [row[0] for row in connection.execute(sa.text("SELECT id FROM manual_fixes"))]
    for fix_id in ids:
        connection.execute(
            sa.text("UPDATE manual_fixes SET uid = :uid WHERE id = :id"),
            {"uid": uuid.uuid4().hex, "id": fix_id},
        )
    op.execute("UPDATE manual_fixes SET scope = 'advertiser' WHERE source = 'advertiser'")
    with op.batch_alter_table('manual_fixes', schema=None) as batch_op:
        batch_op.alter_column('uid', existing_type=sa.String(length=32), nullable=False)
        batch_op.create_index(batch_op.f('ix_manual_fixes_uid'), ['uid'], unique=True)

    op.add_column('sitemap_items', sa.Column('image_type_source', sa.String(length=16), nullable=False, server_default='ml'))
    op.add_column('sitemap_items', sa.Column('color_source', sa.String(length=16), nullable=False, server_default='ml'))
    op.execute(
        "UPDATE sitemap_items SET image_type_source = CASE"
        " WHEN status <> 'ok' THEN 'default'"
        " WHEN image_type = ml_image_type THEN 'ml' ELSE 'fix' END"
    )
    op.execute(
        "UPDATE sitemap_items SET color_source = CASE"
        " WHEN color IS NULL AND ml_color IS NULL THEN 'ml'"
        " WHEN color = ml_color THEN 'ml'"
        " WHEN color = feed_color THEN 'feed' ELSE 'fix' END"
    )

    op.create_table('sync_state',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_sync_state'))
    )


def downgrade() -> None:
    op.drop_table('sync_state')
    with op.batch_alter_table('sitemap_items', schema=None) as batch_op:
        batch_op.drop_column('color_source')
        batch_op.drop_column('image_type_source')
    with op.batch_alter_table('manual_fixes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_manual_fixes_uid'))
        batch_op.drop_column('scope')
        batch_op.drop_column('uid')
