"""Getting advertisers' inventory in: the one guarded HTTP client (:mod:`.fetch`), hardened sitemap
parsing (:mod:`.sitemap`), image keys, decoding and hashes (:mod:`.images`), and the scrape that
ties them to the ML server and the database (:mod:`.scrape`, orchestration only; its SQL is in
:mod:`db.scrapes`).

Only :mod:`.scrape` touches the database; the import contract keeps the other three free of it.
"""
