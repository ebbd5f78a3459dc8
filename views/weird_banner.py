"""A banner of the open weird-result findings of one scrape, for the sitemap review page.

Usage, once the scrape being viewed is known::

    from views.weird_banner import findings_banner

    findings_banner(scrape_id)
"""

from __future__ import annotations

import contextlib

import streamlit as st
from streamlit.errors import StreamlitAPIException

from db.models import Severity
from views.loaders import load_scrape_findings

SHOWN = 3
"""Findings spelled out in the banner; the rest are counted."""


def findings_banner(scrape_id: int) -> None:
    """Show the open findings of ``scrape_id`` (nothing when there are none).

    Critical findings (e.g. an ML outage of most of the scrape) make it an error box that says
    what to do now, others a warning box. Explanations are plain text;
    the link leads to the Weird results page filtered to the scrape's advertiser.
    """
    findings = load_scrape_findings(scrape_id)
    if not findings:
        return
    critical = any(f.severity == Severity.CRITICAL for f in findings)
    # The process notes: relaunch first; the dev team only when a relaunch failed too.
    again = any(
        f.severity == Severity.CRITICAL and f.evidence.get("failed_again_after") for f in findings
    )
    advice = (
        " Critical: tell the dev team, a relaunch failed too."
        if again
        else " Critical: relaunch the scrape now; if it fails again, tell the dev team."
        if critical
        else ""
    )
    box = st.error if critical else st.warning
    cases = sorted({f.case for f in findings})
    box(
        f"{len(findings)} weird result(s) in this scrape: {', '.join(cases)}." + advice,
        icon="🚨" if critical else ":material/report:",
    )
    with st.expander("What looks wrong", expanded=critical):
        for finding in findings[:SHOWN]:
            st.text(finding.explanation)
        if len(findings) > SHOWN:
            st.caption(f"and {len(findings) - SHOWN} more.")
        advertiser = findings[0].advertiser
        # Without the Weird results page in the app's navigation there is nothing to link to.
        with contextlib.suppress(StreamlitAPIException):
            st.page_link(
                "views/weird.py",
                label="Open Weird results",
                icon=":material/troubleshoot:",
                query_params={"advertiser": advertiser} if advertiser else None,
            )
