"""Serve Tagdesk: ``streamlit run serve.py`` (what ``make run`` and the browser tests start).

The app is ``app.py``, as ever; this launcher adds the session cookie's HTTP routes beside it
(:mod:`views.session_cookie`), which Streamlit serves through its ``st.App``.
"""

from __future__ import annotations

import streamlit as st

from views.session_cookie import routes

app = st.App("app.py", routes=routes())
