"""scrape chunks: one scrape split among queue workers, each item stored once

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 09:00:00.000000

* ``scrape_chunks``: slices of a scrape's sitemap (the parsed items as JSON) that queue workers
  claim with a lease (``db.chunks``).
* ``scrapes.chunk_total``, ``scrapes.fan_in_by``, ``scrapes.fan_in_until``: how many chunks a
  scrape has, and who finishes it once they are all done (an election with a lease).
* ``ix_sitemap_items_scrape_position`` becomes unique: a position is stored once per scrape, so a
  worker that lost its chunk (its lease expired, another one took it) cannot store an item twice.
  Scrapes have always written distinct positions; should a database hold duplicates anyway, the
  upgrade stops and names a scrape rather than delete items.

Columns are added with plain ALTER TABLE and the index is dropped and created again (no table
copy), so the chart triggers of migration 0004 stay in place on SQLite.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('scrape_chunks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scrape_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('items', sa.JSON(), nullable=False),
    sa.Column('item_count', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('claimed_by', sa.String(length=200), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['scrape_id'], ['scrapes.id'], name=op.f('fk_scrape_chunks_scrape_id_scrapes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_scrape_chunks'))
    )
    op.create_index('ix_scrape_chunks_scrape_number', 'scrape_chunks', ['scrape_id', 'number'], unique=True)
    op.create_index('ix_scrape_chunks_state', 'scrape_chunks', ['state', 'scrape_id'], unique=False)
    op.add_column('scrapes', sa.Column('chunk_total', sa.Integer(), nullable=True))
    op.add_column('scrapes', sa.Column('fan_in_by', sa.String(length=200), nullable=True))
    op.add_column('scrapes', sa.Column('fan_in_until', sa.DateTime(timezone=True), nullable=True))
    duplicate = op.get_bind().execute(sa.text(
        'SELECT scrape_id, position FROM sitemap_items GROUP BY scrape_id, position '
        'HAVING COUNT(*) > 1 LIMIT 1'
    )).first()
    if duplicate is not None:
        raise RuntimeError(
            f'scrape {duplicate[0]} holds position {duplicate[1]} twice: remove the duplicate '
            'items (or that scrape) before upgrading'
        )
    op.drop_index('ix_sitemap_items_scrape_position', table_name='sitemap_items')
    op.create_index('ix_sitemap_items_scrape_position', 'sitemap_items', ['scrape_id', 'position'], unique=True)


def downgrade() -> None:
    op.drop_index('ix_sitemap_items_scrape_position', table_name='sitemap_items')
    op.create_index('ix_sitemap_items_scrape_position', 'sitemap_items', ['scrape_id', 'position'], unique=False)
    op.drop_column('scrapes', 'fan_in_until')
    op.drop_column('scrapes', 'fan_in_by')
    op.drop_column('scrapes', 'chunk_total')
    op.drop_index('ix_scrape_chunks_state', table_name='scrape_chunks')
    op.drop_index('ix_scrape_chunks_scrape_number', table_name='scrape_chunks')
    op.drop_table('scrape_chunks')
