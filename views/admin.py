"""Accounts: who may sign in and with which role, and the advertisers' bearer tokens.

Every write goes through ``db.accounts`` with the signed-in admin, which checks the permission
again (against the database): hiding this page from other roles is a convenience, not the guard.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import streamlit as st
from sqlalchemy.orm import Session

from db.accounts import (
    Permission,
    create_advertiser_token,
    create_user,
    revoke_advertiser_token,
    set_role,
)
from db.models import Role
from tagging.accounts import change_disabled, reset_password
from tagging.errors import TaggingError
from views.common import clear_query_cache, plain, require_page, session_factory
from views.loaders import (
    TokenRow,
    UserRow,
    load_advertiser_tokens,
    load_advertisers,
    load_users,
)

NOTICE = "admin_notice"
ROLES = [role.value for role in Role]
ROLE_HELP = (
    "analyst: review and fix · developer: also datasets and models · "
    "manager: read only · admin: also accounts and tokens"
)

actor = require_page(Permission.MANAGE_USERS)


def _write(action: Callable[[Session], str]) -> None:
    """Run one write in its own transaction, then rerun with fresh data and its message.

    Errors are shown where the action was asked for; nothing is written then.
    """
    try:
        with session_factory().begin() as session:
            message = action(session)
    except TaggingError as exc:
        st.error(plain(exc), icon=":material/error:")
        return
    clear_query_cache()
    st.session_state[NOTICE] = message
    st.rerun()


def _when(column: pd.Series) -> pd.Series:
    # SQLite gives naive timestamps (UTC) and PostgreSQL aware ones: one dtype for the table.
    return pd.to_datetime(column, utc=True)


def _users_table(users: list[UserRow]) -> pd.DataFrame:
    frame = pd.DataFrame(
        [
            {
                "username": user.username,
                "email": user.email,
                "role": user.role,
                "disabled": user.disabled,
                "SSO only": user.sso_only,
                "last sign-in": user.last_login_at,
                "failed attempts": user.failed_attempts,
                "locked until": user.locked_until,
            }
            for user in users
        ]
    )
    for column in ("last sign-in", "locked until"):
        frame[column] = _when(frame[column])
    return frame


def _tokens_table(tokens: list[TokenRow]) -> pd.DataFrame:
    frame = pd.DataFrame(
        [
            {
                "id": token.id,
                "advertiser": token.advertiser,
                "label": token.label,
                "created by": token.created_by,
                "created": token.created_at,
                "last used": token.last_used_at,
                "revoked": token.revoked_at,
            }
            for token in tokens
        ]
    )
    for column in ("created", "last used", "revoked"):
        frame[column] = _when(frame[column])
    return frame


WHEN = st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")

st.title("Accounts")
st.caption("Who may sign in to Tagdesk and with which role; the tokens of advertisers' front ends.")
if notice := st.session_state.pop(NOTICE, None):
    st.success(notice, icon=":material/check_circle:")

try:
    users = load_users(actor)
    advertisers = load_advertisers()
except TaggingError as exc:
    st.error(plain(exc), icon=":material/error:")
    st.stop()

# --- users -------------------------------------------------------------------------------------

st.subheader("Users", anchor=False)
st.dataframe(
    _users_table(users),
    hide_index=True,
    width="stretch",
    column_config={"last sign-in": WHEN, "locked until": WHEN},
)

add_column, change_column = st.columns(2, gap="large")

with add_column, st.form("add_user", clear_on_submit=True):
    st.markdown("**Add a user**")
    left, right = st.columns(2)
    new_username = left.text_input("Username", key="add_username")
    new_email = right.text_input("Email", key="add_email", help="Needed to sign in with SSO.")
    new_role = left.selectbox("Role", ROLES, key="add_role", help=ROLE_HELP)
    new_password = right.text_input(
        "Initial password",
        type="password",
        key="add_password",
        help="At least 10 characters. Leave empty for an account that signs in with SSO only.",
    )
    if st.form_submit_button("Add user", type="primary", icon=":material/person_add:"):

        def add_user(session: Session) -> str:
            user = create_user(
                session,
                actor,
                new_username,
                new_role,
                new_password or None,
                new_email.strip() or None,
            )
            return f"Added {plain(user.username)} ({user.role})."

        _write(add_user)

with change_column, st.container(border=True):
    st.markdown("**Change a user**")
    by_name = {user.username: user for user in users}
    chosen = st.selectbox(
        "User",
        list(by_name),
        key="change_user",
        format_func=lambda name: (
            f"{name} · {by_name[name].role}" + (" · disabled" if by_name[name].disabled else "")
        ),
    )
    target = by_name[chosen]
    if target.username == actor.username:
        st.caption("This is your own account.")

    role_column, password_column = st.columns(2)
    with role_column, st.form("change_role", border=False):
        new_role = st.selectbox(
            "Role", ROLES, index=ROLES.index(target.role), key=f"role_of_{target.username}"
        )
        if st.form_submit_button("Change role"):
            _write(
                lambda session: (
                    f"{plain(set_role(session, actor, target.username, new_role).username)} "
                    f"is now {new_role}."
                )
            )
    with password_column, st.form("reset_password", border=False, clear_on_submit=True):
        reset = st.text_input(
            "New password", type="password", key="reset_password", help="Also lifts a lock."
        )
        if st.form_submit_button("Reset password"):
            _write(
                lambda session: (
                    f"New password set for "
                    f"{plain(reset_password(session, actor, target.username, reset)[0].username)}"
                    "; every browser of it is signed out."
                )
            )

    disable = not target.disabled
    if st.button(
        "Disable account" if disable else "Enable account",
        icon=":material/block:" if disable else ":material/lock_open:",
        key="toggle_user",
    ):
        _write(
            lambda session: (
                f"{'Disabled' if disable else 'Enabled'} "
                f"{plain(change_disabled(session, actor, target.username, disable)[0].username)}."
            )
        )

# --- advertiser tokens -------------------------------------------------------------------------

st.subheader("Advertiser tokens", anchor=False)
st.caption(
    "An advertiser's own front end records fixes with one of these bearer tokens. "
    "Tagdesk keeps only a hash: a token is shown once, when it is made."
)

if not advertisers:
    st.info("No advertisers yet: add one with `python -m tagging advertisers add`.")
    st.stop()

names = {advertiser.id: advertiser.name for advertiser in advertisers}
with st.form("create_token", clear_on_submit=True):
    left, right = st.columns(2)
    advertiser_id = left.selectbox(
        "Advertiser", list(names), format_func=names.__getitem__, key="token_advertiser"
    )
    label = right.text_input(
        "Label", key="token_label", placeholder="e.g. production front end", max_chars=200
    )
    create = st.form_submit_button("Create token", type="primary", icon=":material/key:")
if create:
    try:
        with session_factory().begin() as session:
            token = create_advertiser_token(session, actor, advertiser_id, label)
    except TaggingError as exc:
        st.error(plain(exc), icon=":material/error:")
    else:
        clear_query_cache()
        st.warning(
            f"Copy this token for {plain(names[advertiser_id])} now: it will not be shown again.",
            icon=":material/content_copy:",
        )
        st.code(token, language=None)

tokens = load_advertiser_tokens()
if not tokens:
    st.caption("No tokens yet.")
    st.stop()

st.dataframe(
    _tokens_table(tokens),
    hide_index=True,
    width="stretch",
    column_config={"created": WHEN, "last used": WHEN, "revoked": WHEN},
)
active = {token.id: token for token in tokens if token.revoked_at is None}
if active:
    with st.form("revoke_token"):
        token_id = st.selectbox(
            "Token to revoke",
            list(active),
            key="revoke_token_id",
            format_func=lambda i: (
                f"#{i} · {active[i].advertiser}"
                + (f" · {active[i].label}" if active[i].label else "")
            ),
        )
        if st.form_submit_button("Revoke", icon=":material/block:"):
            _write(
                lambda session: (
                    f"Revoked token #{revoke_advertiser_token(session, actor, token_id).id}."
                )
            )
