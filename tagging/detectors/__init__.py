"""Weird-result detectors: the known cases where a sitemap's classification went wrong.

Each detector is a pure function over :class:`~tagging.detectors.base.Facts` (what the database
knows: the latest scrape of each advertiser, a few scrapes of history, images' content hashes, the
manual-fix history) and returns :class:`db.findings.Candidate` findings. :mod:`.refresh` loads the
facts (:mod:`.facts`), runs every detector (:mod:`.registry`) and has ``db.findings`` store the
candidates as findings and keep their state; the detectors touch neither a database nor Streamlit.

The cases (see the "Understanding weird results" page of the original service), one module each:

1. :mod:`.ml_outage`: the ML system failed to respond, so many images got the defaults
   (Placeholder, no color) although they are not obvious placeholders.
2. :mod:`.advertiser_placeholder`: a Placeholder with a color, the trace of an advertiser's fix.
3. :mod:`.legacy_placeholder`: Color "N/A", how the old system cached placeholders.
4. :mod:`.shared_cdn_conflict`: advertisers sharing a CDN fix the same image differently.
5. :mod:`.fix_not_sticking`: a fixed image came back under a new image_key (the CDN changed its
   URL or headers) with the ML label the fix had corrected.
6. :mod:`.near_duplicates`: near-identical images of different dealers carry different labels.
7. :mod:`.criteria_shift`: an advertiser's labels shift (class share or fix rate) against its own
   history or against all advertisers: a sign of different criteria.

False alarms cost as much as misses: each detector needs several images, a baseline or a manual
fix before it says anything, and skips what it cannot judge (no history, no perceptual hash).

The other modules, from the bottom up:

- :mod:`.base`: the facts' dataclasses and the :class:`~tagging.detectors.base.Thresholds`.
- :mod:`.common`: label constants, perceptual-hash pairing (``near_pairs``) and the helpers that
  word explanations and evidence alike in every case.
- :mod:`.facts`: ``load_facts``, the only module that reads the database for the detectors: the
  scrapes' counts and the fix history up front; items only through ``Facts.source``, in bounded
  pages and lookups (a scrape may hold 500,000 items: never all of them as Python objects).
- :mod:`.registry`: ``DETECTORS`` (name → detector) and ``detect_all``.
- :mod:`.refresh` and :mod:`.remedies`: running the detectors, and the fixes that settle a finding.

A new detector:

1. add its name and its case title to ``db/vocab.py`` (a constant and an entry of ``CASES``);
2. add a module here with ``detect_x(facts: Facts, t: Thresholds = DEFAULT_THRESHOLDS) ->
   list[Candidate]``, importing only :mod:`.base`, :mod:`.common` and ``db`` (never another case);
   new facts it needs go to :mod:`.base` and are loaded in :mod:`.facts` (items: through
   ``facts.source``, as counts, filtered streams or lookups by image_key, never a whole scrape).
   It skips advertisers outside ``facts.in_scope`` unless it compares advertisers with each
   other: then it judges all of them and its name goes to ``GLOBAL_DETECTORS`` in
   ``db/vocab.py`` too;
3. register it in ``DETECTORS`` in :mod:`.registry`;
4. add ``tests/tagging/detectors/test_x.py``: what it flags, and what it must not (the crafted data
   of ``tests/utils/world.py`` builds both).

This file imports nothing: import from the modules themselves.
"""
