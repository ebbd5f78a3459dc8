"""Streamlit pages: UI only. Every query and write is a function in ``db`` or ``tagging``.

Not called ``pages/``: Streamlit turns a ``pages/`` folder beside the entry point into pages of
their own, reachable by URL before ``app.py`` has run once, which would skip its sign-in.
"""
