"""Tagdesk's library: everything the pages, the CLI and the servers call (no Streamlit here).

Subpackages, one concern each (see the README's architecture section):

* :mod:`tagging.ingest`: the guarded HTTP client, sitemaps, images, scrape orchestration;
* :mod:`tagging.ml`: the Image Type model, its data and training, the color models (no database);
* :mod:`tagging.detectors`: the weird-result detectors, their facts, refresh and remedies;
* :mod:`tagging.fixes`: record a manual fix and push it (the use case every caller shares);
* :mod:`tagging.server`: the ML server and its client; :mod:`tagging.api`: the advertisers' fix API;
* :mod:`tagging.jobs`: the task queue; :mod:`tagging.cli`: the commands; :mod:`tagging.demo`.
"""
