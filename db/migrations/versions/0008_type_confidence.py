"""type confidence: sitemap_items.ml_confidence and ml_probabilities

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 09:00:00.000000

* ``sitemap_items.ml_confidence``: the model's probability of ``ml_image_type``, so that the review
  page can show the least confident items first (where the model's mistakes are).
* ``sitemap_items.ml_probabilities``: the model's probability of every Image Type class (JSON).
* ``ix_sitemap_items_scrape_confidence`` on ``(scrape_id, ml_confidence, position)``: a page of
  one scrape in that order is read off the index instead of sorting the whole scrape.

Items stored before stay NULL in both (the scrape never kept the answer): they sort after the
others until the next scrape. Columns are added and dropped with plain ALTER TABLE (no table copy),
so the chart triggers of migration 0004 on ``sitemap_items`` stay in place on SQLite.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('sitemap_items', sa.Column('ml_confidence', sa.Double(), nullable=True))
    op.add_column('sitemap_items', sa.Column('ml_probabilities', sa.JSON(none_as_null=True), nullable=True))
    op.create_index('ix_sitemap_items_scrape_confidence', 'sitemap_items', ['scrape_id', 'ml_confidence', 'position'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_sitemap_items_scrape_confidence', table_name='sitemap_items')
    op.drop_column('sitemap_items', 'ml_probabilities')
    op.drop_column('sitemap_items', 'ml_confidence')
