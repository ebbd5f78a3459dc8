"""Background work on a task queue (:mod:`.tasks`: relaunched scrapes, the periodic fix push), run
by ``python -m tagging worker``. The queue is built lazily, never at import time.
"""
