"""Streamlit pages: UI only. Every query and write is a function in ``db`` or ``tagging``.

Pages read through :mod:`views.loaders` (every cached reader) and share :mod:`views.common` (the
cached resources, the session-state keys, sign-in); they never import another page. Helper
modules (:mod:`views.weird_banner`, :mod:`views.charts_specs`) hold UI pieces, not pages.

Not called ``pages/``: Streamlit turns a ``pages/`` folder beside the entry point into pages of
their own, reachable by URL before ``app.py`` has run once, which would skip its sign-in.
"""
