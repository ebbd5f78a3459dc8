"""Tagdesk's frame: page config, sign-in, and the navigation each role may see.

Pages hold UI only; the checks that matter are in the library calls they make (``db.accounts``).
"""

from __future__ import annotations

import streamlit as st

from db.accounts import Permission
from views.common import current_actor, sign_out
from views.session_cookie import sync_session_cookie

# Every page's URL path (its file's name). Before sign-in each one shows the sign-in page, so that
# a link or a reload keeps its page and query parameters and opens them once signed in. (A comment,
# not a docstring: Streamlit's magic would show a bare string on the page.)
PAGE_URL_PATHS = ("home", "review", "history", "weird", "charts", "curation", "admin")

st.set_page_config(page_title="Tagdesk", page_icon="🏷️", layout="wide")

actor = current_actor()  # also signs in from the session cookie (a reload, a link, a new tab)
sync_session_cookie()
if actor is None:
    sign_in = "views/sign_in.py"
    st.navigation(
        [
            st.Page(sign_in, title="Sign in", icon=":material/login:", default=True),
            *(
                st.Page(sign_in, title="Sign in", icon=":material/login:", url_path=path)
                for path in PAGE_URL_PATHS
            ),
        ],
        position="hidden",
    ).run()
    st.stop()

sections: dict[str, list[st.Page]] = {
    "Review": [
        st.Page("views/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("views/review.py", title="Sitemap review", icon=":material/grid_view:"),
        st.Page("views/history.py", title="Fix history", icon=":material/history:"),
        st.Page("views/weird.py", title="Weird results", icon=":material/troubleshoot:"),
    ],
}
if actor.can(Permission.VIEW_CHARTS):
    sections["Insights"] = [
        st.Page("views/charts.py", title="Misclassification", icon=":material/monitoring:"),
    ]
if actor.can(Permission.MODELS):
    sections["Models"] = [
        st.Page("views/curation.py", title="Dataset curation", icon=":material/dataset:"),
    ]
if actor.can(Permission.MANAGE_USERS):
    sections["Admin"] = [
        st.Page("views/admin.py", title="Accounts", icon=":material/manage_accounts:"),
    ]

with st.sidebar:
    st.caption(f"Signed in as **{actor.username}** · {actor.role}")
    st.button("Sign out", on_click=sign_out, icon=":material/logout:")

st.navigation(sections).run()
