"""Weird results: the findings of the known-case detectors, with their evidence and remedies.

Findings are grouped by known case, most severe and newest first. Remedies write only for a role
that may (the library functions check it again). Everything advertiser-supplied (URLs, titles) is
shown as plain text or in tables, never as Markdown.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from urllib.parse import quote, urlencode

import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitAPIException

from db.accounts import Actor, Permission
from db.findings import (
    FindingView,
    ignore_finding,
    mark_conflicting,
    mark_fixed,
    set_auto_carry,
)
from db.fixes import FixOutcome
from db.models import FindingState, Severity
from db.vocab import (
    ADVERTISER_PLACEHOLDER,
    CASES,
    COLORS,
    FIX_NOT_STICKING,
    IMAGE_TYPES,
    LEGACY_PLACEHOLDER,
    ML_OUTAGE,
    NEAR_DUPLICATES,
    SHARED_CDN_CONFLICT,
)
from tagging.detectors.refresh import recompute_findings
from tagging.detectors.remedies import (
    accept,
    carry_over_finding,
    carry_over_fixes,
    choose_value,
    retag,
)
from tagging.fixes import run_fix_action
from tagging.jobs.tasks import enqueue_scrape
from views.common import (
    clear_query_cache,
    ml_client,
    plain,
    require_page,
    session_factory,
    settings,
    shown_errors,
)
from views.loaders import load_advertisers, load_findings, load_open_counts, load_thumbnails
from views.page_state import Field, PageState

# Findings shown per case; narrow by advertiser to see the rest. (Comments, not docstrings: a
# page script's bare strings would be written on the page by Streamlit's magic.)
PER_CASE = 20
STATES = {
    FindingState.OPEN: "Open",
    FindingState.IGNORED: "Ignored",
    FindingState.FIXED: "Fixed",
}
SEVERITY_BADGES = {
    Severity.CRITICAL: ("Critical", "red", ":material/error:"),
    Severity.WARNING: ("Warning", "orange", ":material/warning:"),
    Severity.INFO: ("Info", "blue", ":material/info:"),
}
ALL = "All advertisers"
STATUS_NAMES = {"ml_failure": "ML failures", "fixed": "fixed", "error": "image errors"}
FLASH = "weird-flash"  # Session-state key of the messages shown after the next rerun.
# The pickers, in the widgets' keys and the URL (views/page_state.py); the banner of the review
# page links here with ?advertiser=NAME.
STATE = PageState(
    "weird",
    [
        Field("advertiser", ALL),
        Field("state", (FindingState.OPEN,), many=True, parse=FindingState),
        Field("case", (), many=True),
    ],
)


# --- actions ------------------------------------------------------------------------------------


def act(
    message: str,
    action: Callable[..., FixOutcome | None],
    *args: object,
    advertiser_id: int | None = None,
) -> None:
    """Run one remedy in one transaction, refresh the findings, push any fixes, and rerun."""
    with shown_errors():
        saved = run_fix_action(
            session_factory(),
            ml_client(),
            lambda session: action(session, *args),
            advertiser_id=advertiser_id,
        )
        flash = [("success", message)]
        fix_ids = saved.fix_ids
        if fix_ids and saved.push_error:
            flash.append(
                (
                    "warning",
                    f"{len(fix_ids)} fix(es) saved, pending sync: the ML server could not be "
                    f"reached ({plain(saved.push_error)}). They are retried until it "
                    "acknowledges them.",
                )
            )
        elif fix_ids:
            flash.append(("info", f"{len(fix_ids)} fix(es) sent to the ML server."))
        elif saved.outcome is not None:
            flash.append(("info", "Every image had that value already: no fix was needed."))
        clear_query_cache()
        st.session_state[FLASH] = flash
        st.rerun()


def relaunch(actor: Actor, advertiser: str) -> None:
    with shown_errors():
        enqueue_scrape(settings(), actor, advertiser)
        st.session_state[FLASH] = [
            (
                "success",
                f"Scrape of {plain(advertiser)} queued: only the images that need it are "
                "classified "
                "again. Findings are refreshed when it finishes.",
            )
        ]
        st.rerun()


# --- pieces of the page -------------------------------------------------------------------------


def review_link(params: dict, label: str) -> None:
    """A link to the review page filtered by ``params`` (``views/review.py`` reads them)."""
    clean = {k: v for k, v in params.items() if v}
    try:
        st.page_link(
            "views/review.py", label=label, icon=":material/filter_alt:", query_params=clean
        )
    except StreamlitAPIException:
        # The review page is not in this app's navigation (e.g. the page run on its own): a
        # plain relative link, its query percent-encoded so nothing in it can become Markdown.
        query = urlencode(clean, doseq=True, quote_via=quote, safe="")
        st.markdown(f"[{label}](review?{query})")


def evidence_table(finding: FindingView) -> None:
    """The evidence's images: thumbnail, advertiser, label, URL (all plain text)."""
    images = finding.evidence.get("images") or []
    if not images:
        return
    keys = tuple(sorted({i["image_key"] for i in images if i.get("image_key")}))
    thumbs = load_thumbnails(keys)
    rows = [
        {
            "thumbnail": (
                "data:image/jpeg;base64," + base64.b64encode(thumbs[i["image_key"]]).decode()
                if i.get("image_key") in thumbs
                else None
            ),
            "advertiser": i.get("advertiser"),
            "label": i.get("label"),
            "image_url": i.get("image_url"),
            "image_key": i.get("image_key"),
        }
        for i in images
    ]
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        width="stretch",
        row_height=64,
        height=min(len(rows), 5) * 64 + 38,
        placeholder="—",
        column_config={
            "thumbnail": st.column_config.ImageColumn("image", width="small"),
            "label": st.column_config.TextColumn("now"),
            "image_url": st.column_config.TextColumn("image URL"),
            "image_key": st.column_config.TextColumn("image_key"),
        },
        key=f"evidence-{finding.id}",
    )
    count = finding.evidence.get("count")
    if isinstance(count, int) and count > len(rows):
        st.caption(f"{len(rows)} of {count:,} images shown.")


def timeline(finding: FindingView) -> None:
    rows = finding.evidence.get("timeline") or []
    if rows:
        st.caption("Timeline of the fixes")
        st.dataframe(
            pd.DataFrame(rows),
            hide_index=True,
            width="stretch",
            placeholder="—",
            column_order=["at", "advertiser", "user", "source", "old_value", "new_value", "fix_id"],
            column_config={
                "at": st.column_config.TextColumn("when (UTC)"),
                "old_value": st.column_config.TextColumn("old"),
                "new_value": st.column_config.TextColumn("new"),
                "fix_id": st.column_config.NumberColumn("fix"),
            },
            key=f"timeline-{finding.id}",
        )


def remedies(finding: FindingView, actor: Actor) -> None:
    """The one-click remedies of this finding's case, for a role that may write."""
    e = finding.evidence
    can_fix = actor.can(Permission.FIX)
    adv_id = finding.advertiser_id
    if e.get("review"):
        review = e["review"]
        shown = [
            *review.get("type", []),
            *(STATUS_NAMES.get(s, s) for s in review.get("status", [])),
        ]
        shown_text = " · ".join(plain(s) for s in shown)
        review_link(review, "Open the sitemap" + (f": {shown_text}" if shown else ""))
    if finding.state != FindingState.OPEN:
        return
    if finding.detector in (ML_OUTAGE, LEGACY_PLACEHOLDER) and actor.can(Permission.RELAUNCH):
        label = (
            "Re-classify: relaunch the scrape"
            if finding.detector == LEGACY_PLACEHOLDER
            else ("Relaunch the scrape")
        )
        if st.button(label, key=f"relaunch-{finding.id}", icon=":material/refresh:"):
            relaunch(actor, finding.advertiser or "")
    if not can_fix:
        return
    if finding.detector == ADVERTISER_PLACEHOLDER:
        options = [t for t in IMAGE_TYPES if t != "Placeholder"]
        suggested = e.get("suggested_type")
        value = st.selectbox(
            "Re-tag as",
            options,
            index=options.index(suggested) if suggested in options else 0,
            key=f"retag-value-{finding.id}",
        )
        columns = st.columns(2)
        if columns[0].button("Re-tag", key=f"retag-{finding.id}", icon=":material/sell:"):
            act(f"Re-tagged as {value}.", retag, actor, finding.id, value, advertiser_id=adv_id)
        if columns[1].button("Accept", key=f"accept-{finding.id}", icon=":material/done:"):
            act("Accepted: the advertiser has the last word.", accept, actor, finding.id)
    elif finding.detector == SHARED_CDN_CONFLICT:
        options = list(IMAGE_TYPES if e.get("field") == "image_type" else COLORS)
        values = [v for v in e.get("values", []) if v in options]
        value = st.selectbox(
            "Value for every advertiser",
            options,
            index=options.index(values[0]) if values else 0,
            key=f"choose-value-{finding.id}",
        )
        if st.button("Apply to all", key=f"choose-{finding.id}", icon=":material/done_all:"):
            act(f"{value} applied for every advertiser.", choose_value, actor, finding.id, value)
    elif finding.detector == FIX_NOT_STICKING:
        if st.button("Carry the fix over", key=f"carry-{finding.id}", icon=":material/move_down:"):
            act("Fix carried over to the new image_key.", carry_over_finding, actor, finding.id)
    elif finding.detector == NEAR_DUPLICATES and st.button(
        "Mark as conflicting", key=f"conflicting-{finding.id}", icon=":material/flag:"
    ):
        act("Marked as conflicting examples.", mark_conflicting, actor, finding.id)

    # A form: a browser commits a text input when it loses focus, so a button enabled only once
    # a reason was committed took two clicks (the first one only committed the reason). A form
    # sends the reason with the click. Enter does not submit: it would pick a button for you.
    with (
        st.popover("Ignore or mark fixed", icon=":material/more_horiz:"),
        st.form(f"dismiss-{finding.id}", border=False, enter_to_submit=False),
    ):
        reason = st.text_input("Reason", key=f"reason-{finding.id}", max_chars=500)
        columns = st.columns(2)
        ignore = columns[0].form_submit_button("Ignore", key=f"ignore-{finding.id}")
        fixed = columns[1].form_submit_button("Mark fixed", key=f"fixed-{finding.id}")
        if ignore and not reason.strip():
            st.error("Say why it is ignored: the reason is kept with the finding.")
        elif ignore:
            act("Ignored until its evidence changes.", ignore_finding, actor, finding.id, reason)
        elif fixed:
            act("Marked fixed.", mark_fixed, actor, finding.id, reason)


def finding_card(finding: FindingView, actor: Actor) -> None:
    label, color, icon = SEVERITY_BADGES.get(finding.severity, ("?", "gray", None))
    with st.container(border=True):
        head = st.columns([1, 5])
        head[0].badge(label, color=color, icon=icon)
        where = [finding.advertiser or "—"]
        if finding.scrape_id:
            where.append(f"scrape #{finding.scrape_id}")
        where.append(f"found {finding.detected_at:%Y-%m-%d %H:%M} UTC")
        head[1].text(" · ".join(where))
        if finding.state != FindingState.OPEN:
            state = STATES.get(finding.state, finding.state)
            by = f" by {finding.state_by}" if finding.state_by else ""
            when = f" on {finding.state_at:%Y-%m-%d %H:%M}" if finding.state_at else ""
            st.text(
                f"{state}{by}{when}" + (f": {finding.state_reason}" if finding.state_reason else "")
            )
        if finding.severity == Severity.CRITICAL:
            # The process notes: relaunch first; the dev team only when that fails too.
            st.error(
                "Tell the dev team: the problem persists after a relaunch."
                if finding.evidence.get("failed_again_after")
                else "Urgent: relaunch the scrape now. If it fails again, tell the dev team.",
                icon="🚨",
            )
        # The explanation names advertisers and users: plain text, never Markdown.
        st.text(finding.explanation)
        left, right = st.columns([5, 2])
        with left:
            evidence_table(finding)
            timeline(finding)
        with right:
            remedies(finding, actor)


# --- the page -----------------------------------------------------------------------------------

actor = require_page(Permission.READ)
can_fix = actor.can(Permission.FIX)

st.title("Weird results")
st.caption(
    "The known cases where a sitemap's classification went wrong, found after every scrape and "
    "every fix. Ignored findings stay ignored until their evidence changes."
)

for kind, text in st.session_state.pop(FLASH, []):
    getattr(st, kind)(text)

advertisers = load_advertisers()
names = {a.name: a.id for a in advertisers}
STATE.enter()

counts = load_open_counts()
metrics = st.columns(4)
metrics[0].metric("Open findings", f"{sum(counts.values()):,}")
metrics[1].metric("Critical", f"{counts.get(Severity.CRITICAL, 0):,}")
metrics[2].metric("Warnings", f"{counts.get(Severity.WARNING, 0):,}")
metrics[3].metric("Info", f"{counts.get(Severity.INFO, 0):,}")
if counts.get(Severity.CRITICAL):
    st.error(
        "Critical findings: the ML system failed for most of a scrape, or again after a "
        "relaunch. Relaunch first; tell the dev team when a relaunch fails too.",
        icon="🚨",
    )

controls = st.columns([3, 3, 3, 2])
options = [ALL, *names]
case_options = list(CASES)
STATE.keep_within("advertiser", options, fallback=ALL)
STATE.keep_within("state", list(STATES))
STATE.keep_within("case", case_options)
chosen = controls[0].selectbox("Advertiser", options, key=STATE.key("advertiser"))
advertiser_id = names.get(chosen)
states = controls[1].multiselect(
    "State", list(STATES), key=STATE.key("state"), format_func=lambda s: STATES[s]
)
cases = controls[2].multiselect(
    "Case",
    case_options,
    key=STATE.key("case"),
    format_func=CASES.__getitem__,
    placeholder="All cases",
)
# The view is known: remember it and show it in the URL.
STATE.save()
with controls[3]:
    st.write("")
    refresh = can_fix and st.button(
        "Recompute",
        icon=":material/refresh:",
        help="Run every detector now (they also run after each scrape and each fix).",
    )
if refresh:
    with shown_errors():
        report = recompute_findings(session_factory(), actor)
        clear_query_cache()
        st.session_state[FLASH] = [
            (
                "success",
                f"Findings recomputed: {len(report.opened)} new, {len(report.reopened)} reopened, "
                f"{len(report.resolved)} no longer detected.",
            )
        ]
        st.rerun()

if advertiser_id is not None and can_fix:
    auto = next(a for a in advertisers if a.id == advertiser_id).auto_carry_fixes
    enabled = st.toggle(
        f"Carry fixes over automatically after every scrape of {plain(chosen)}",
        value=auto,
        help="When the CDN re-publishes a fixed image under a new URL or headers, the fix is "
        "copied to the new image_key (history source: carry_over) and pushed to the ML cache.",
    )
    if enabled != auto:
        act(
            f"Automatic carry-over {'on' if enabled else 'off'} for {plain(chosen)}.",
            set_auto_carry,
            actor,
            advertiser_id,
            enabled,
        )

findings = load_findings(tuple(states or STATES), advertiser_id)
if cases:
    findings = [f for f in findings if f.detector in cases]
if not findings:
    st.success("Nothing weird here.", icon=":material/check_circle:")
    st.stop()

for case, title in CASES.items():
    group = [f for f in findings if f.detector == case]
    if not group:
        continue
    st.subheader(f"{title} ({len(group)})")
    if case == FIX_NOT_STICKING and can_fix:
        by_advertiser = sorted({(f.advertiser_id, f.advertiser) for f in group if f.advertiser_id})
        for adv_id, name in by_advertiser:
            mine = [f for f in group if f.advertiser_id == adv_id and f.state == FindingState.OPEN]
            if len(mine) > 1 and st.button(
                f"Carry all {len(mine)} fixes over for {plain(name)}",
                key=f"carry-all-{adv_id}",
                icon=":material/move_down:",
            ):
                act(
                    f"Fixes carried over for {plain(name)}.",
                    lambda session, a, i: carry_over_fixes(session, a, advertiser_id=i),
                    actor,
                    adv_id,
                    advertiser_id=adv_id,
                )
    for finding in group[:PER_CASE]:
        finding_card(finding, actor)
    if len(group) > PER_CASE:
        st.caption(f"{len(group) - PER_CASE} more: choose an advertiser to see them.")
