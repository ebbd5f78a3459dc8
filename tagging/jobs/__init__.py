"""Background work on task queues (:mod:`.tasks`: queued and chunked scrapes, the periodic fix push
and archiving, dataset builds, training), run by ``python -m tagging worker``; the records of long
jobs and their progress (:mod:`.records`) and the dataset build job (:mod:`.dataset_builds`). The
queues are built lazily, never at import time.
"""
