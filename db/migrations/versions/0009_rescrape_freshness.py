"""rescrape freshness: images.fresh_until, ix_images_url and scrapes.sitemap_state

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 09:00:00.000000

* ``images.fresh_until``: until when the CDN's caching headers (``Cache-Control: max-age``,
  ``Expires``) say the image is unchanged, as the ML server saw it. A re-scrape of an unchanged
  sitemap copies the items of fresh images in one ``INSERT ... SELECT`` and asks the ML server
  only about the others.
* ``ix_images_url`` on ``images.url``: which keys (and so thumbnails) the app already has for a
  batch's image URLs, so that the ML server sends no thumbnail for them.
* ``scrapes.sitemap_state`` (JSON): the sitemap documents a scrape read (URL, ETag,
  Last-Modified, SHA-256) and their problems, to tell the next scrape whether the sitemap changed.

Rows stored before stay NULL: their images count as stale and their scrapes as "sitemap unknown",
so the first scrape after the upgrade is a normal one. Columns are added with plain ALTER TABLE (no
table copy), so the chart triggers of migration 0004 stay in place on SQLite.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('images', sa.Column('fresh_until', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_images_url', 'images', ['url'], unique=False)
    op.add_column('scrapes', sa.Column('sitemap_state', sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    op.drop_column('scrapes', 'sitemap_state')
    op.drop_index('ix_images_url', table_name='images')
    op.drop_column('images', 'fresh_until')
