"""Tagdesk's system of record: typed SQLAlchemy models, the engine, and the queries pages call.

Importable without Streamlit. The caller owns the transaction: one user action is one
``with Session.begin():`` block around the functions of :mod:`db.advertisers`.
"""
