"""Dataset curation: build the next dataset version from the team's fixes, step by step.

UI only: every action is one call to :mod:`tagging.datasets.drafts`, which checks the role again
and owns the transaction. Each step shows its preview (counts and example pictures) before its
Apply button; the last step can be undone until the version is frozen. The draft lives in the
database, so a reload, another tab or another developer sees the same one.

Advertiser names and vehicle pages are shown with ``st.text`` or in tables, never as Markdown.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, date, datetime, time

import altair as alt
import pandas as pd
import streamlit as st

from db.accounts import Actor, Permission
from db.vocab import IMAGE_TYPES, TYPE_COLORS
from tagging.curation.balance import NO_ADVERTISER
from tagging.curation.split import NamedTestSet
from tagging.datasets.drafts import (
    BALANCE,
    CROP,
    EXTEND,
    PAGE_STEPS,
    PRUNE,
    PULL,
    SIZE,
    SPLIT,
    STEP_TITLES,
    BalanceParams,
    CropParams,
    DecisionRequest,
    DraftView,
    Example,
    ExtendParams,
    PruneParams,
    ReviewRow,
    SizeParams,
    SplitParams,
    StepParams,
    StepPreview,
    apply_step,
    decide,
    freeze,
    last_retrain,
    start_draft,
    undo_step,
)
from tagging.ingest.fetch import client_from_settings
from views.common import (
    clear_query_cache,
    findings_refresher,
    ml_client,
    plain,
    require_page,
    session_factory,
    settings,
    shown_errors,
)
from views.loaders import (
    curation_archive,
    load_advertisers,
    load_curation_thumbnail,
    load_current_draft,
    load_dataset_versions,
    load_pull_preview,
    load_step_preview,
)

STEP_KEY = "curation-step"
# The step the stepper shows on the next run (set by an action, before the radio exists). (Comments,
# not docstrings: Streamlit's magic would show a bare string on the page.)
GOTO_KEY = "curation-goto"
FLASH_KEY = "curation-flash"
CONFIRM_KEY = "curation-confirm-freeze"
COLUMNS = 6  # example pictures per row
GENERATED = "generated (no advertiser)"

UNDECIDED = "—"
# The prune grid's decision column (a drop needs its reason in the next column).
DECISIONS = (UNDECIDED, "keep", "drop", *(f"relabel → {name}" for name in IMAGE_TYPES))


# --- small pieces --------------------------------------------------------------------------------


def _flash(message: str) -> None:
    st.session_state[FLASH_KEY] = message


def _done(message: str, goto: str | None) -> None:
    """After a write: fresh data, the message, the step to show, and a new run."""
    clear_query_cache()
    _flash(message)
    if goto is not None:
        st.session_state[GOTO_KEY] = goto
    st.rerun()


def _progress(text: str) -> Callable[[int, int], None]:
    """A progress bar for a long step, and the callback that moves it."""
    bar = st.progress(0.0, text=text)

    def report(done: int, total: int) -> None:
        bar.progress(min(1.0, done / total) if total else 1.0, text=f"{text} {done}/{total}")

    return report


def _data_url(example: Example, *, cropped: bool = False) -> str:
    jpeg = load_curation_thumbnail(
        example.sha256, example.image_key, example.crop if cropped else None
    )
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def _counts(preview: StepPreview) -> None:
    """Each count table side by side (keys may be advertiser names: tables, not Markdown)."""
    tables = [(title, counts) for title, counts in preview.counts.items() if counts]
    if not tables:
        return
    for column, (title, counts) in zip(st.columns(len(tables)), tables, strict=True):
        with column:
            frame = pd.DataFrame({title: list(counts), "images": list(counts.values())})
            st.dataframe(frame, hide_index=True, width="stretch")


def _examples(examples: tuple[Example, ...], *, before_after: bool = False) -> None:
    """Example pictures in a grid; under each, its note and advertiser as plain text."""
    if not examples:
        return
    if before_after:
        st.caption("Each pair: the picture as it is (left) and as the crop leaves it (right).")
    per_row = COLUMNS // 2 if before_after else COLUMNS
    for start in range(0, len(examples), per_row):
        cells = st.columns(per_row)
        for cell, example in zip(cells, examples[start : start + per_row], strict=False):
            with cell:
                if before_after:
                    left, right = st.columns(2)
                    left.image(load_curation_thumbnail(example.sha256, example.image_key, None))
                    right.image(
                        load_curation_thumbnail(example.sha256, example.image_key, example.crop)
                    )
                else:
                    st.image(load_curation_thumbnail(example.sha256, example.image_key, None))
                st.text(f"{example.image_type} · {example.note}")
                if example.advertiser:
                    st.text(example.advertiser)


def _preview(preview: StepPreview, *, before_after: bool = False, notes: bool = True) -> None:
    st.info(plain(preview.summary), icon=":material/preview:")
    for warning in preview.warnings:
        st.warning(plain(warning))
    for note in preview.notes if notes else ():
        st.caption(plain(note))
    _counts(preview)
    _examples(preview.examples, before_after=before_after)


def _class_color() -> alt.Color:
    """The Image Types in the app's colors (the Home page's), in their usual order."""
    return alt.Color(
        "class:N",
        scale=alt.Scale(domain=list(TYPE_COLORS), range=list(TYPE_COLORS.values())),
        sort=list(IMAGE_TYPES),
    )


def _balance_charts(preview: StepPreview) -> None:
    report = preview.balance
    if report is None:
        return
    by_split = pd.DataFrame(
        [
            {"split": split, "class": name, "images": count}
            for split, counts in report.by_split.items()
            for name, count in counts.items()
        ]
    )
    by_advertiser = pd.DataFrame(
        [
            # Rows without an advertiser are the generated images (the first version's).
            {
                "advertiser": GENERATED if advertiser == NO_ADVERTISER else advertiser,
                "class": name,
                "images": count,
            }
            for advertiser, counts in report.by_advertiser.items()
            for name, count in counts.items()
        ]
    )
    left, right = st.columns(2)
    with left:
        st.markdown("**Classes per split**")
        st.altair_chart(
            alt.Chart(by_split)
            .mark_bar()
            .encode(
                x=alt.X("split:N", sort=["train", "test"], axis=alt.Axis(labelAngle=0)),
                xOffset=alt.XOffset("class:N", sort=list(IMAGE_TYPES)),
                y="images:Q",
                color=_class_color(),
                tooltip=["split", "class", "images"],
            )
            .properties(height=260),
            width="stretch",
        )
    with right:
        st.markdown("**Classes per advertiser**")
        if not by_advertiser.empty:
            st.altair_chart(
                alt.Chart(by_advertiser)
                .mark_bar()
                .encode(
                    y=alt.Y("advertiser:N", title=None, axis=alt.Axis(labelLimit=220)),
                    x="images:Q",
                    color=_class_color(),
                    tooltip=["advertiser", "class", "images"],
                )
                .properties(height=260),
                width="stretch",
            )


def _apply_button(
    actor: Actor, draft: DraftView, params: StepParams, label: str, progress_text: str | None
) -> None:
    step = STEP_TITLES[draft.next_step or PULL]
    if st.button(f"Apply: {label}", type="primary", key=f"apply-{draft.next_step}"):
        report = _progress(progress_text) if progress_text else None
        with shown_errors():
            applied = apply_step(
                session_factory(), actor, curation_archive(), draft.number, params, progress=report
            )
            _done(f"{step} applied to version {draft.number}.", applied.next_step)


# --- the pull (no draft yet) ---------------------------------------------------------------------


def _pull(actor: Actor) -> None:
    st.subheader("1 · Pull the team fixes")
    versions = load_dataset_versions()
    frozen = [v.number for v in versions if v.state == "frozen"]
    parents: list[int | str | None] = ["latest", *frozen, None]
    left, middle, right = st.columns(3)
    parent = left.selectbox(
        "Parent version",
        parents,
        format_func=lambda p: (
            "the newest frozen version"
            if p == "latest"
            else ("none (a first version)" if p is None else f"version {p}")
        ),
        key="curation-parent",
    )
    retrained = last_retrain(settings().models_dir)
    default_day: date | None = retrained.date() if retrained else None
    day = middle.date_input(
        "Fixes made on or after",
        value=default_day,
        help="Defaults to the last retrain of the Image Type model. Empty: every fix since the "
        "parent's cut-off.",
        key="curation-since",
    )
    seed = right.number_input("Seed", min_value=0, value=0, step=1, key="curation-seed")
    since = (
        datetime.combine(day, time.min, tzinfo=UTC) if isinstance(day, date) else None
    )  # the whole day: a fix made the day of the retrain, before it, is not lost
    with shown_errors():
        _preview(load_pull_preview(actor, parent, since))
        if st.button("Apply: start the draft", type="primary", key="apply-pull"):
            report = _progress("Archiving the pulled images…")
            with client_from_settings(settings()) as client:
                draft = start_draft(
                    session_factory(),
                    actor,
                    curation_archive(),
                    parent,
                    since,
                    int(seed),
                    client=client,
                    progress=report,
                )
            _done(f"Draft version {draft.number} started.", draft.next_step)


# --- the steps of a draft ------------------------------------------------------------------------


def _state(draft: DraftView) -> str:
    """What a cached preview depends on: the recipe, the page state and the manifest."""
    return f"{draft.version.manifest_sha256}:{draft.version.recipe!r}"


def _size(actor: Actor, draft: DraftView) -> None:
    left, right = st.columns(2)
    width = left.number_input("Minimum width (px)", min_value=0, value=200, step=10, key="min-w")
    height = right.number_input("Minimum height (px)", min_value=0, value=150, step=10, key="min-h")
    params = SizeParams(int(width), int(height))
    with shown_errors():
        _preview(load_step_preview(actor, draft.number, _state(draft), params, False))
        _apply_button(actor, draft, params, f"drop images under {width}x{height}", None)


def _review_frame(rows: tuple[ReviewRow, ...]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image": [_data_url(r.example) for r in rows],
            "why": [f"{r.kind} {r.group}" if r.group else r.kind for r in rows],
            "label": [r.example.image_type for r in rows],
            "suggested": [r.suggested or "" for r in rows],
            # Text, blank when there is none (a number column shows "None"); 0.00–1.00 sorts.
            "confidence": [f"{r.confidence:.2f}" if r.confidence is not None else "" for r in rows],
            "advertiser": [r.example.advertiser or "" for r in rows],
            "excluded": [r.exclusion or "" for r in rows],
            "decision": [_decision_option(r.decision) for r in rows],
            "reason": [_reason_of(r.decision) for r in rows],
        },
        index=[r.example.sha256 for r in rows],
    )


def _decision_option(text: str | None) -> str:
    if text is None:
        return UNDECIDED
    if text.startswith("drop"):
        return "drop"
    return text if text in DECISIONS else UNDECIDED


def _reason_of(text: str | None) -> str:
    if text and text.startswith("drop (") and text.endswith(")"):
        return text[len("drop (") : -1]
    return ""


def _request(sha256: str, option: str, reason: str) -> DecisionRequest:
    if option == UNDECIDED:
        return DecisionRequest(sha256, "undecided")
    if option == "keep":
        return DecisionRequest(sha256, "keep")
    if option == "drop":
        return DecisionRequest(sha256, "drop", reason=reason)
    return DecisionRequest(sha256, "relabel", image_type=option.removeprefix("relabel → "))


def _record(actor: Actor, draft: DraftView, requests: list[DecisionRequest]) -> None:
    outcome = decide(session_factory(), actor, draft.number, requests, ml=ml_client())
    if outcome.fix_ids:
        # The relabels are team fixes: fresh caches now, the findings refreshed in the background.
        clear_query_cache()
        findings_refresher().request(outcome.advertiser_ids)
    message = f"{len(requests)} decision(s) recorded."
    if outcome.fix_ids:
        message += f" {len(outcome.fix_ids)} relabel fix(es) in the history."
    if outcome.push_error:
        message += " The ML server has not got them yet (retried every minute)."
    _done(message, PRUNE)


def _prune(actor: Actor, draft: DraftView) -> None:
    # Off at first: the ranking embeds every training image with the model again whenever a
    # decision changes the draft, so the conflicts are decided without waiting for it.
    rank = st.toggle(
        "Rank likely label errors (cleanlab on the model's embeddings)",
        value=False,
        key="curation-rank",
        help="Embeds every archived training image with the production Image Type model and "
        "lists the images whose label the others contradict, likeliest first.",
    )
    with shown_errors():
        ranking = " and ranking likely label errors" if rank else ""
        with st.spinner(f"Clustering near-duplicates{ranking}…"):
            preview = load_step_preview(actor, draft.number, _state(draft), PruneParams(), rank)
        # (Without the ranking, its only note would be why there is none: the toggle says it.)
        _preview(preview, notes=rank)
        if not rank:
            st.caption("Likely label errors are not ranked: turn the ranking on to list them.")
        if preview.advertiser_issues:
            st.caption("Share of each advertiser's images flagged as likely label errors")
            st.dataframe(
                pd.DataFrame(
                    {
                        "advertiser": list(preview.advertiser_issues),
                        "flagged share": list(preview.advertiser_issues.values()),
                    }
                ),
                hide_index=True,
                column_config={
                    "flagged share": st.column_config.ProgressColumn(
                        "flagged share", min_value=0.0, max_value=1.0, format="percent"
                    )
                },
            )
        rows = preview.review
        if not rows:
            st.success("Nothing to review: no conflicting near-duplicates, no likely label error.")
        else:
            advertisers = sorted({r.example.advertiser or "" for r in rows})
            only = st.selectbox(
                "Advertiser", ["every advertiser", *advertisers], key="curation-prune-advertiser"
            )
            if only != "every advertiser":
                rows = tuple(r for r in rows if (r.example.advertiser or "") == only)
            _prune_grid(actor, draft, rows)
            _large_view(actor, draft, rows)
        _apply_button(actor, draft, PruneParams(), "prune", None)


def _prune_grid(actor: Actor, draft: DraftView, rows: tuple[ReviewRow, ...]) -> None:
    """The review grid: conflicting clusters first, then likely label errors; one decision and
    a reason per image, recorded together (one transaction)."""
    st.caption(
        "Conflicting near-duplicate clusters first, then likely label errors. Undecided images "
        "of a conflicting cluster are left out when the step is applied."
    )
    shown = _review_frame(rows)
    edited = st.data_editor(
        shown,
        key=f"prune-grid-{draft.number}",
        hide_index=True,
        row_height=72,
        width="stretch",
        disabled=[c for c in shown.columns if c not in ("decision", "reason")],
        # Widths that fit a laptop's screen, the decision and its reason in view.
        column_config={
            "image": st.column_config.ImageColumn("image", width=64),
            "why": st.column_config.TextColumn("why", width=86),
            "label": st.column_config.TextColumn("label", width=92),
            "suggested": st.column_config.TextColumn("suggested", width=88),
            "confidence": st.column_config.TextColumn("confidence", width=76),
            "advertiser": st.column_config.TextColumn("advertiser", width=120),
            "excluded": st.column_config.TextColumn("excluded", width=150),
            "decision": st.column_config.SelectboxColumn(
                "decision", options=list(DECISIONS), required=True, width=120
            ),
            "reason": st.column_config.TextColumn("reason (drop)", max_chars=200, width=150),
        },
    )
    changed = [
        _request(str(sha), str(edited.at[sha, "decision"]), str(edited.at[sha, "reason"] or ""))
        for sha in shown.index
        if (edited.at[sha, "decision"], edited.at[sha, "reason"])
        != (shown.at[sha, "decision"], shown.at[sha, "reason"])
    ]
    if st.button(
        f"Record {len(changed)} decision(s)", disabled=not changed, key="record-decisions"
    ):
        with shown_errors():
            _record(actor, draft, changed)


def _large_view(actor: Actor, draft: DraftView, rows: tuple[ReviewRow, ...]) -> None:
    """One image large, with its facts, and a decision about it."""
    with st.expander("Large view: one image and its decision", expanded=True):
        by_sha = {r.example.sha256: r for r in rows}
        sha = st.selectbox(
            "Image",
            list(by_sha),
            format_func=lambda s: (
                f"{list(by_sha).index(s) + 1}. {by_sha[s].kind} {by_sha[s].group} · "
                f"{by_sha[s].example.image_type} · {s[:10]}…"
            ),
            key="prune-image",
        )
        if sha is None:
            return
        row = by_sha[sha]
        picture, facts = st.columns([1, 2])
        picture.image(load_curation_thumbnail(sha, row.example.image_key, None), width=320)
        with facts:
            st.text(f"Label: {row.example.image_type} / {row.example.color or 'no color'}")
            st.text(f"Advertiser: {row.example.advertiser or '—'}")
            st.text(f"Vehicle page: {row.page_url or '—'}")
            if row.suggested:
                st.text(f"Suggested: {row.suggested} (confidence {row.confidence:.2f})")
            st.text(f"Excluded: {row.exclusion or 'no'}")
            st.text(f"Decision: {row.decision or 'none yet'}")
            # A form: the decision and its reason reach the server together, so a click on
            # Record never finds a reason typed but not yet committed.
            with st.form(f"prune-one-{sha[:16]}", border=False):
                option = st.radio(
                    "Decision", DECISIONS, horizontal=True, key=f"prune-decision-{sha[:16]}"
                )
                reason = st.text_input("Reason (for a drop)", key=f"prune-reason-{sha[:16]}")
                recorded = st.form_submit_button("Record decision")
            if recorded:
                with shown_errors():
                    _record(actor, draft, [_request(sha, option, reason)])


def _crop(actor: Actor, draft: DraftView) -> None:
    params = CropParams()
    with shown_errors():
        with st.spinner("Looking for uniform borders and letterboxing…"):
            preview = load_step_preview(actor, draft.number, _state(draft), params, False)
        _preview(preview, before_after=True)
        _apply_button(actor, draft, params, "record the crops", "Finding crop boxes…")


def _split(actor: Actor, draft: DraftView) -> None:
    left, right = st.columns([1, 2])
    fraction = left.slider("Test share of each class", 0.05, 0.5, 0.2, 0.05, key="test-share")
    advertisers = sorted({t.advertiser for t in draft.named_test_sets} | set(_advertisers()))
    kept = [t.advertiser for t in draft.named_test_sets if t.advertiser in advertisers]
    named = right.multiselect(
        "Named per-advertiser test sets (every image of these advertisers goes to test)",
        advertisers,
        default=kept,
        key="named-sets",
    )
    names = {t.advertiser: t.name for t in draft.named_test_sets}
    params = SplitParams(
        test_fraction=float(fraction),
        named_test_sets=tuple(
            NamedTestSet(name=names.get(a, f"{a} test set"), advertiser=a) for a in named
        ),
    )
    with shown_errors():
        preview = load_step_preview(actor, draft.number, _state(draft), params, False)
        _preview(preview)
        _balance_charts(preview)
        _apply_button(actor, draft, params, "split train/test", None)


def _advertisers() -> list[str]:
    return [a.name for a in load_advertisers()]


def _extend(actor: Actor, draft: DraftView) -> None:
    params = ExtendParams()
    with shown_errors():
        _preview(load_step_preview(actor, draft.number, _state(draft), params, False))
        _apply_button(actor, draft, params, "confirm the extended version", None)


def _balance(actor: Actor, draft: DraftView) -> None:
    share = st.slider(
        "Warn when a class is under this share of a split", 0.0, 0.5, 0.1, 0.01, key="min-share"
    )
    params = BalanceParams(float(share))
    with shown_errors():
        preview = load_step_preview(actor, draft.number, _state(draft), params, False)
        _preview(preview)
        _balance_charts(preview)
        _apply_button(actor, draft, params, "confirm the balance", None)


STEP_VIEWS: dict[str, Callable[[Actor, DraftView], None]] = {
    SIZE: _size,
    PRUNE: _prune,
    CROP: _crop,
    SPLIT: _split,
    EXTEND: _extend,
    BALANCE: _balance,
}


def _applied(draft: DraftView, step: str) -> None:
    st.success(f"{STEP_TITLES[step]} is applied.", icon=":material/check_circle:")
    params = draft.params.get(step)
    if params:
        st.dataframe(
            pd.DataFrame({"parameter": list(params), "value": [str(v) for v in params.values()]}),
            hide_index=True,
        )
    counts = draft.version.counts
    st.text(
        f"The draft holds {counts.get('rows', 0)} images, {counts.get('included', 0)} to train."
    )


def _draft(actor: Actor, draft: DraftView) -> None:
    version = draft.version
    st.subheader(f"Draft version {version.number}")
    st.text(
        f"Parent: {version.parent or 'none'} · started by {version.created_by} · "
        f"{version.counts.get('included', 0)} training images of {version.counts.get('rows', 0)}"
    )
    goto = st.session_state.pop(GOTO_KEY, None)
    if goto in PAGE_STEPS:
        st.session_state[STEP_KEY] = goto
    elif st.session_state.get(STEP_KEY) not in PAGE_STEPS:
        st.session_state[STEP_KEY] = draft.next_step or BALANCE

    def label(step: str) -> str:
        mark = " ✓" if step in draft.applied else ""
        return f"{PAGE_STEPS.index(step) + 1} {STEP_TITLES[step]}{mark}"

    step = st.radio("Step", PAGE_STEPS, format_func=label, horizontal=True, key=STEP_KEY)
    st.divider()
    if step in draft.applied:
        _applied(draft, step)
    elif step == draft.next_step:
        STEP_VIEWS[step](actor, draft)
    else:
        st.info(f"Apply {STEP_TITLES[draft.next_step or PULL]} first: the steps run in order.")
    st.divider()
    _undo_and_freeze(actor, draft)


def _undo_and_freeze(actor: Actor, draft: DraftView) -> None:
    last = draft.applied[-1] if draft.applied else PULL
    undo_label = (
        "Undo last step: Pull (throws the draft away)"
        if last == PULL
        else f"Undo last step: {STEP_TITLES[last]}"
    )
    left, right = st.columns(2)
    if left.button(undo_label, icon=":material/undo:", key="undo-step"):
        with shown_errors():
            undone = undo_step(session_factory(), actor, curation_archive(), draft.number)
            _done(
                f"{STEP_TITLES[last]} undone." if undone else "Draft thrown away.",
                last if undone else None,
            )
    with right:
        if draft.next_step is not None:
            st.button("Freeze", disabled=True, help="Apply every step first.", key="freeze")
            return
        if not st.session_state.get(CONFIRM_KEY):
            if st.button("Freeze…", type="primary", icon=":material/lock:", key="freeze"):
                st.session_state[CONFIRM_KEY] = True
                st.rerun()
            return
        st.warning(
            f"Freeze version {draft.number}? Its recipe and manifest SHA-256 are recorded and it "
            "never changes again."
        )
        yes, no = st.columns(2)
        if yes.button("Yes, freeze", type="primary", key="freeze-yes"):
            st.session_state.pop(CONFIRM_KEY, None)
            with shown_errors():
                frozen = freeze(session_factory(), actor, draft.number)
                _done(
                    f"Version {frozen.number} frozen · manifest SHA-256 {frozen.manifest_sha256}",
                    None,
                )
        if no.button("Cancel", key="freeze-no"):
            st.session_state.pop(CONFIRM_KEY, None)
            st.rerun()


def _when(moment: datetime | None) -> str:
    """A moment as the table shows it, in UTC (text: a time-zone-aware column is deprecated)."""
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if moment else ""


def _versions() -> None:
    versions = load_dataset_versions()
    with st.expander(f"Versions ({len(versions)})", expanded=not versions):
        if not versions:
            st.text("No dataset version yet.")
            return
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "version": v.number,
                        "parent": v.parent,
                        "state": v.state,
                        "by": v.created_by,
                        "created": _when(v.created_at),
                        "frozen": _when(v.frozen_at),
                        "images": v.counts.get("rows"),
                        "training": v.counts.get("included"),
                        "manifest sha256": v.manifest_sha256,
                    }
                    for v in versions
                ]
            ),
            hide_index=True,
            width="stretch",
        )


def main() -> None:
    actor = require_page(Permission.MODELS)
    st.title("Dataset curation")
    st.caption(
        "Build the next training set from the team's fixes. Each step shows what it does before "
        "you apply it, and the last step can be undone until the version is frozen."
    )
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash:
        st.success(plain(flash), icon=":material/check_circle:")
    _versions()
    with shown_errors():
        draft = load_current_draft(actor)
        if draft is None:
            _pull(actor)
        else:
            _draft(actor, draft)


main()
