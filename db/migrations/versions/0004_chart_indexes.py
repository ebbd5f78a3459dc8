"""chart summaries and indexes: scrape_class_counts kept by triggers, two covering indexes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 06:00:00.000000

The Misclassification page (``db.charts``) counts items per model version and value over months
of scrapes: millions of rows. ``scrape_class_counts`` holds those counts per scrape, and triggers
on ``sitemap_items`` keep it exact whoever writes the items (the scrape, a bulk load, a test).

* SQLite: row triggers (an upsert per item; a scrape inserts 64 items per batch).
* PostgreSQL: statement triggers with transition tables for INSERT and DELETE (one grouped
  upsert per statement, so ``COPY`` and cascaded deletes stay fast), and a row trigger for an
  UPDATE of the counted columns (nothing updates them today; a fix changes ``image_type`` and
  ``color``, which are not counted, so it never fires).

Two covering indexes: ``sitemap_items (id, versions, ML values)`` for the values of the items that
fixes were made on, and ``manual_fixes (image_key, field, old_value, id)`` for the back-and-forth
count.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTED = "scrape_id, status, model_version, ml_image_type, color_model_version, ml_color"
KEY = "scrape_id, model, status, version, value"


def _grouped(source: str) -> str:
    """The counts of the items in ``source`` (a table or a transition table), both models.

    Grouped by the stored (coalesced) key, so that no key comes twice in one upsert.
    """
    return f"""
        SELECT scrape_id, 'image_type' AS model, status, coalesce(model_version, '') AS version,
               coalesce(ml_image_type, '') AS value, count(*) AS items
        FROM {source} GROUP BY 1, 2, 3, 4, 5
        UNION ALL
        SELECT scrape_id, 'color', status, coalesce(color_model_version, ''),
               coalesce(ml_color, ''), count(*)
        FROM {source} GROUP BY 1, 2, 3, 4, 5
    """


def _row_values(row: str) -> str:
    return f"""
        ({row}.scrape_id, 'image_type', {row}.status, coalesce({row}.model_version, ''),
         coalesce({row}.ml_image_type, ''), 1),
        ({row}.scrape_id, 'color', {row}.status, coalesce({row}.color_model_version, ''),
         coalesce({row}.ml_color, ''), 1)
    """


def _row_match(row: str) -> str:
    return f"""
        scrape_id = {row}.scrape_id AND status = {row}.status AND (
            (model = 'image_type' AND version = coalesce({row}.model_version, '')
             AND value = coalesce({row}.ml_image_type, ''))
            OR (model = 'color' AND version = coalesce({row}.color_model_version, '')
             AND value = coalesce({row}.ml_color, '')))
    """


SQLITE_TRIGGERS = (
    f"""
    CREATE TRIGGER trg_sitemap_items_counts_insert AFTER INSERT ON sitemap_items
    BEGIN
        INSERT INTO scrape_class_counts ({KEY}, items) VALUES {_row_values('NEW')}
        ON CONFLICT ({KEY}) DO UPDATE SET items = items + 1;
    END
    """,
    f"""
    CREATE TRIGGER trg_sitemap_items_counts_delete AFTER DELETE ON sitemap_items
    BEGIN
        UPDATE scrape_class_counts SET items = items - 1 WHERE {_row_match('OLD')};
    END
    """,
    f"""
    CREATE TRIGGER trg_sitemap_items_counts_update AFTER UPDATE OF {COUNTED} ON sitemap_items
    BEGIN
        UPDATE scrape_class_counts SET items = items - 1 WHERE {_row_match('OLD')};
        INSERT INTO scrape_class_counts ({KEY}, items) VALUES {_row_values('NEW')}
        ON CONFLICT ({KEY}) DO UPDATE SET items = items + 1;
    END
    """,
)

POSTGRES_TRIGGERS = (
    f"""
    CREATE FUNCTION scrape_class_counts_add() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO scrape_class_counts AS c ({KEY}, items) {_grouped('new_items')}
        ON CONFLICT ({KEY}) DO UPDATE SET items = c.items + excluded.items;
        RETURN NULL;
    END $$
    """,
    f"""
    CREATE FUNCTION scrape_class_counts_remove() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE scrape_class_counts AS c SET items = c.items - gone.items
        FROM ({_grouped('old_items')}) AS gone
        WHERE c.scrape_id = gone.scrape_id AND c.model = gone.model AND c.status = gone.status
          AND c.version = gone.version AND c.value = gone.value;
        RETURN NULL;
    END $$
    """,
    f"""
    CREATE FUNCTION scrape_class_counts_move() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE scrape_class_counts SET items = items - 1 WHERE {_row_match('OLD')};
        INSERT INTO scrape_class_counts AS c ({KEY}, items) VALUES {_row_values('NEW')}
        ON CONFLICT ({KEY}) DO UPDATE SET items = c.items + 1;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER trg_sitemap_items_counts_insert AFTER INSERT ON sitemap_items
    REFERENCING NEW TABLE AS new_items
    FOR EACH STATEMENT EXECUTE FUNCTION scrape_class_counts_add()
    """,
    """
    CREATE TRIGGER trg_sitemap_items_counts_delete AFTER DELETE ON sitemap_items
    REFERENCING OLD TABLE AS old_items
    FOR EACH STATEMENT EXECUTE FUNCTION scrape_class_counts_remove()
    """,
    f"""
    CREATE TRIGGER trg_sitemap_items_counts_update AFTER UPDATE OF {COUNTED} ON sitemap_items
    FOR EACH ROW EXECUTE FUNCTION scrape_class_counts_move()
    """,
)


def upgrade() -> None:
    op.create_table('scrape_class_counts',
    sa.Column('scrape_id', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=32), nullable=False),
    sa.Column('items', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['scrape_id'], ['scrapes.id'], name=op.f('fk_scrape_class_counts_scrape_id_scrapes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('scrape_id', 'model', 'status', 'version', 'value', name=op.f('pk_scrape_class_counts'))
    )
    with op.batch_alter_table('sitemap_items', schema=None) as batch_op:
        batch_op.create_index('ix_sitemap_items_id_ml', ['id', 'model_version', 'ml_image_type', 'color_model_version', 'ml_color'], unique=False)

    with op.batch_alter_table('manual_fixes', schema=None) as batch_op:
        batch_op.create_index('ix_manual_fixes_key_field_old', ['image_key', 'field', 'old_value', 'id'], unique=False)

    # The items already there, before the triggers count the new ones (same transaction).
    op.execute(f"INSERT INTO scrape_class_counts ({KEY}, items) {_grouped('sitemap_items')}")
    triggers = POSTGRES_TRIGGERS if op.get_bind().dialect.name == "postgresql" else SQLITE_TRIGGERS
    for statement in triggers:
        op.execute(statement)


def downgrade() -> None:
    for action in ("insert", "delete", "update"):
        op.execute(f"DROP TRIGGER IF EXISTS trg_sitemap_items_counts_{action}" + (
            " ON sitemap_items" if op.get_bind().dialect.name == "postgresql" else ""
        ))
    if op.get_bind().dialect.name == "postgresql":
        for function in ("add", "remove", "move"):
            op.execute(f"DROP FUNCTION IF EXISTS scrape_class_counts_{function}()")
    with op.batch_alter_table('manual_fixes', schema=None) as batch_op:
        batch_op.drop_index('ix_manual_fixes_key_field_old')

    with op.batch_alter_table('sitemap_items', schema=None) as batch_op:
        batch_op.drop_index('ix_sitemap_items_id_ml')

    op.drop_table('scrape_class_counts')
