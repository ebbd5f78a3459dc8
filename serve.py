"""Serve Tagdesk: ``streamlit run serve.py`` (what ``make run`` and the browser tests start).

The app is ``app.py``, as ever; this launcher adds plain HTTP routes beside it, which Streamlit
serves through its ``st.App``: the session cookie's (:mod:`views.session_cookie`) and the review
grid's pictures (:mod:`views.media`).
"""

from __future__ import annotations

import streamlit as st

from views.media import media_routes
from views.session_cookie import base_path, routes

app = st.App("app.py", routes=[*routes(), *media_routes(base_path())])
