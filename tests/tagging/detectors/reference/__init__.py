"""The detectors as they were before they read the database in bounded queries (commit 9c09549,
``tagging/detectors/``, verbatim but for the imports): every latest item loaded as Python objects.

The reference that ``test_bounded_facts.py`` compares today's detectors with, on random worlds:
an independent implementation of the same findings, not today's code run twice. Not used by the
application.
"""
