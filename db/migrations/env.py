"""Alembic environment: migrates the app database whose URL the caller gives.

``python -m tagging migrate`` (and every process at start-up) calls :func:`db.engine.migrate`,
which passes the URL from the settings. From Alembic's own command line, give it with
``alembic -x url=sqlite:///data/tagdesk.sqlite upgrade head``.
"""

from __future__ import annotations

from alembic import context

from db.engine import make_engine
from db.models import Base

config = context.config
given_url = config.get_main_option("sqlalchemy.url") or context.get_x_argument(
    as_dictionary=True
).get("url")
if not given_url:
    raise SystemExit(
        "no database URL: run `python -m tagging migrate`, or `alembic -x url=URL upgrade head`"
    )
url: str = given_url


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
