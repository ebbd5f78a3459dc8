"""Tagdesk's frame: page config, sign-in, and the navigation each role may see.

Pages hold UI only; the checks that matter are in the library calls they make (``db.accounts``).
"""

from __future__ import annotations

import streamlit as st

from db.accounts import Permission
from views.common import current_actor, sign_out

st.set_page_config(page_title="Tagdesk", page_icon="🏷️", layout="wide")

actor = current_actor()
if actor is None:
    st.navigation([st.Page("views/sign_in.py", title="Sign in", icon=":material/login:")]).run()
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
if actor.can(Permission.MANAGE_USERS):
    sections["Admin"] = [
        st.Page("views/admin.py", title="Accounts", icon=":material/manage_accounts:"),
    ]

with st.sidebar:
    st.caption(f"Signed in as **{actor.username}** · {actor.role}")
    st.button("Sign out", on_click=sign_out, icon=":material/logout:")

st.navigation(sections).run()
