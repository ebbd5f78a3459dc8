"""Dataset versions as user actions (:mod:`.service`), the archive of images (:mod:`.archive`).

The curation steps are the pure functions of :mod:`tagging.curation`; this package stores their
results (``db.datasets``) and fetches the images they need.
"""
