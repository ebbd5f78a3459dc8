"""Streamlit pages: UI only. Every query and write is a function in ``db`` or ``tagging``."""
