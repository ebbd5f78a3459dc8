"""Sign in: username and password, or the organization's SSO (OpenID Connect) when configured.

The checks (throttle, disabled accounts, SSO email mapping) live in ``db.accounts``; this page
only asks and shows the answer, never telling which of username or password was wrong.
"""

from __future__ import annotations

import streamlit as st

from db.accounts import Actor, actor_for_email, authenticate
from tagging.errors import AuthenticationError
from views.common import (
    ACCOUNT_CLOSED,
    SESSION_EXPIRED,
    SIGNED_OUT,
    client_key,
    oidc_configured,
    plain,
    session_factory,
    sign_in,
    sign_in_throttle,
)

NOTICES = (SESSION_EXPIRED, SIGNED_OUT, ACCOUNT_CLOSED)


def _finish(actor: Actor) -> None:
    for key in NOTICES:
        st.session_state.pop(key, None)
    sign_in(actor)
    st.rerun()


def _password_sign_in(username: str, password: str) -> str | None:
    """Sign in and rerun, or return why not."""
    if not username.strip() or not password:
        return "Enter your username and password."
    actor: Actor | None = None
    error: AuthenticationError | None = None
    # The error is caught inside the transaction so that the failed attempt is committed:
    # the throttle counts it. Failures are also counted per client, across usernames.
    with session_factory().begin() as session:
        try:
            actor = authenticate(
                session, username, password, client=client_key(), throttle=sign_in_throttle()
            )
        except AuthenticationError as exc:
            error = exc
    if actor is None:
        return str(error)
    _finish(actor)
    return None


def _sso_provider() -> str | None:
    """The provider to pass to ``st.login``: None for a plain ``[auth]``, else the first named."""
    auth = st.secrets["auth"]
    if "client_id" in auth:
        return None
    return next((name for name, value in auth.items() if hasattr(value, "keys")), None)


def _sso_sign_in() -> str | None:
    """Map the SSO identity to its Tagdesk account and sign in, or return why not."""
    if st.user.get("email_verified") is False:
        # An unverified address could be anyone's: never match an account on it.
        return "Your SSO provider has not verified your email address."
    actor: Actor | None = None
    error: AuthenticationError | None = None
    with session_factory().begin() as session:
        try:
            actor = actor_for_email(session, str(st.user.get("email") or ""))
        except AuthenticationError as exc:
            error = exc
    if actor is None:
        return str(error)
    _finish(actor)
    return None


_, middle, _ = st.columns([1, 1.1, 1])
with middle:
    st.space("large")
    # A Material icon, not an emoji: machines without an emoji font would show a box.
    st.title("Tagdesk", anchor=False, icon=":material/sell:")
    st.caption("Review and fix the Image Type and Color of advertisers' vehicle images.")

    if st.session_state.pop(ACCOUNT_CLOSED, False):
        st.session_state.pop(SIGNED_OUT, None)
        st.session_state.pop(SESSION_EXPIRED, None)
        st.warning(
            "You were signed out: your account is disabled or no longer exists.",
            icon=":material/block:",
        )
    elif st.session_state.pop(SESSION_EXPIRED, False):
        st.session_state.pop(SIGNED_OUT, None)
        st.warning("Your session expired, sign in again.", icon=":material/schedule:")
    elif st.session_state.pop(SIGNED_OUT, False):
        st.success("Signed out.", icon=":material/logout:")

    sso = oidc_configured()
    sso_error = _sso_sign_in() if sso and st.user.is_logged_in else None

    with st.form("sign_in", border=True):
        username = st.text_input("Username", key="sign_in_username", autocomplete="username")
        password = st.text_input(
            "Password", type="password", key="sign_in_password", autocomplete="current-password"
        )
        submitted = st.form_submit_button("Sign in", type="primary", width="stretch")
    if submitted and (error := _password_sign_in(username, password)):
        st.error(error, icon=":material/error:")

    if sso:
        st.caption("or")
        if sso_error:
            st.error(plain(sso_error), icon=":material/error:")
            # Let the person try another SSO account instead of being stuck with this one.
            st.button("Use another SSO account", on_click=st.logout, width="stretch")
        else:
            st.button(
                "Sign in with SSO",
                on_click=st.login,
                args=(_sso_provider(),),
                icon=":material/key:",
                width="stretch",
            )
