"""Tagdesk's frame: page config and navigation. Pages live in ``pages/``."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="Tagdesk", page_icon="🏷️", layout="wide")

navigation = st.navigation(
    [st.Page("pages/home.py", title="Home", icon=":material/home:", default=True)]
)
navigation.run()
