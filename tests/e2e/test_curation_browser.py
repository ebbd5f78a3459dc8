"""The Dataset curation page in a real browser, on the demo as ``make run`` leaves it: a developer
builds version 2 from the demo's fixes step by step, as a person would (each step's preview
before its Apply: pull, size, the prune decisions with a relabel that goes to the history, crop,
split, an undo, a reload that keeps the draft, extend, balance, freeze), then exports and replays
it headless with the CLI: no near-duplicate and no vehicle page across train and test, and the
replay gives the same manifest."""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.datasets import get_version
from db.models import Image, ManualFix
from tagging.curation.duplicates import CONFLICT
from tagging.datasets.service import NOT_ARCHIVED, version_manifest
from tests.utils.browser import idle, new_page, sign_in, wait_until
from tests.utils.dataset_demo import (
    StagedDemo,
    check_export,
    demo_accounts,
    run_cli,
    staged_demo,
)

pytestmark = pytest.mark.browser

DROP_REASON = "same car as its Sunrise original, labelled the other way"


def button(page: object, name: str) -> object:
    return page.get_by_role("button", name=name, exact=True)  # type: ignore[attr-defined]


class Shots:
    """Full-page screenshots, numbered in order, in ``$TAGDESK_SCREENSHOTS`` when set (pytest
    drops a passing test's tmp_path) for a person to look at."""

    def __init__(self, page: object, folder: Path) -> None:
        self.page, self.folder, self.count = page, folder, 0
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> None:
        self.count += 1
        path = self.folder / f"curation-{self.count:02d}-{name}.png"
        page = self.page
        # The page scrolls inside Streamlit's main block, not the document: the window is made as
        # tall as the content for the picture, then given its size back.
        size = page.viewport_size  # type: ignore[attr-defined]
        height = page.evaluate(  # type: ignore[attr-defined]
            '() => Math.max(...[...document.querySelectorAll(\'[data-testid="stMain"], '
            '[data-testid="stAppViewContainer"]\')].map(e => e.scrollHeight), 0)'
        )
        tall = {"width": size["width"], "height": max(size["height"], height + 120)}
        page.set_viewport_size(tall)  # type: ignore[attr-defined]
        page.wait_for_timeout(400)  # type: ignore[attr-defined]  # (the charts fit the new size)
        page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
        page.set_viewport_size(size)  # type: ignore[attr-defined]


def wait_for(page: object, text: str | re.Pattern[str], seconds: float = 30) -> None:
    """Wait until ``text`` shows, then until the script is idle (an error shown instead fails at
    once, quoting it)."""
    done = page.get_by_text(text).first  # type: ignore[attr-defined]
    alert = page.locator('[data-testid="stAlertContentError"]').first  # type: ignore[attr-defined]
    try:
        done.or_(alert).wait_for(timeout=seconds * 1000)
    except Exception:
        shots = os.environ.get("TAGDESK_SCREENSHOTS")
        if shots:
            page.screenshot(path=f"{shots}/curation-failed.png", full_page=True)  # type: ignore[attr-defined]
        raise
    if not done.is_visible():
        pytest.fail(f"waiting for {text!r}, the page says {alert.inner_text()!r}")
    idle(page, str(text))


def click(page: object, name: str, then: str | re.Pattern[str], seconds: float = 30) -> None:
    """Click a button and wait for the page to say ``then``."""
    idle(page, f"the page before {name}")  # a click during a run can be lost in the rerun
    button(page, name).click()  # type: ignore[attr-defined]
    wait_for(page, then, seconds)


def pictures_drawn(page: object) -> None:
    """Wait until every picture of the page has loaded (a screenshot shows them)."""
    wait_until(
        page,
        lambda: page.evaluate(  # type: ignore[attr-defined]
            "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)"
        ),
        "every picture loaded",
    )


def choose_image(page: object, sha256: str) -> str:
    """Pick the image ``sha256`` in the large view's Image list; its option's text."""
    lists = page.locator(".st-key-prune-image").get_by_role("combobox")  # type: ignore[attr-defined]
    wait_until(page, lambda: lists.count() == 1, "one Image list")
    lists.click()
    lists.fill(f"{sha256[:10]}")  # the list filters as one types
    option = page.get_by_role("option").filter(has_text=f"{sha256[:10]}…")  # type: ignore[attr-defined]
    wait_until(page, lambda: option.count() == 1, f"one option for {sha256[:10]}")
    text = str(option.inner_text())
    option.click()
    idle(page, "the picked image")
    return text


def record(page: object, sha256: str, decision: str, reason: str = "") -> None:
    """In the large view (showing ``sha256``): pick ``decision``, type ``reason``, Record."""
    form = page.locator(f".st-key-prune-decision-{sha256[:16]}")  # type: ignore[attr-defined]
    form.get_by_text(decision, exact=True).click()
    picked = form.get_by_role("radio", name=decision, exact=True)
    wait_until(page, picked.is_checked, f"the {decision} decision is picked")
    if reason:
        page.locator(f".st-key-prune-reason-{sha256[:16]}").get_by_role("textbox").fill(reason)  # type: ignore[attr-defined]
    click(page, "Record decision", "1 decision(s) recorded.")


def developer_fixes(demo: StagedDemo, sha256: str) -> list[tuple[str, str]]:
    """The developer's Image Type fixes of the image ``sha256`` in the history."""
    with demo.sessions() as session:
        return [
            (str(user), str(value))
            for user, value in session.execute(
                select(ManualFix.user, ManualFix.new_value)
                .join(Image, Image.image_key == ManualFix.image_key)
                .where(Image.sha256 == sha256, ManualFix.field == "image_type")
                .where(ManualFix.user == "developer")
            )
        ]


def test_a_developer_builds_version_2_from_the_demo_in_the_browser(
    browser: object,
    running_app: dict,
    app_settings: object,
    demo_dir: Path,
    cdn: object,
    models_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The developer signs in while the demo is being staged: the app's first run (its imports)
    # overlaps the staging instead of adding to it.
    demo_accounts(app_settings)
    with ExitStack() as stack, ThreadPoolExecutor(max_workers=1) as pool:
        staging = pool.submit(
            stack.enter_context, staged_demo(app_settings, demo_dir, cdn, models_dir)
        )
        page = new_page(browser, {"width": 1440, "height": 1100})
        shot = Shots(page, Path(os.environ.get("TAGDESK_SCREENSHOTS") or tmp_path / "shots"))
        sign_in(page, running_app["url"], "developer")
        demo = staging.result()
        flipped = demo.sha256_of(demo.flipped_key)
        original, copy = (demo.sha256_of(key) for key in demo.conflict_keys)
        with demo.sessions() as session:
            fixes_before = session.scalar(select(func.count()).select_from(ManualFix))
        page.get_by_role("link", name="Dataset curation").click()  # type: ignore[attr-defined]
        page.get_by_role("heading", name="Dataset curation").wait_for()  # type: ignore[attr-defined]

        # 1. Pull: what it takes (counts by class, advertiser and analyst, example pictures).
        wait_for(page, re.compile(r"Starts a draft from version 1 \(\d+ images\) with \d+ fixed"))
        for title in ("by class", "by advertiser", "by analyst"):
            page.locator('[data-testid="stDataFrame"]').filter(has_text=title).first.wait_for()  # type: ignore[attr-defined]
        page.locator('[data-testid="stImage"] img').nth(5).wait_for()  # type: ignore[attr-defined]
        pictures_drawn(page)
        shot("pull")
        click(page, "Apply: start the draft", "Draft version 2 started.")

        # 2. Size: what it would drop, before anything is dropped. A stricter minimum first (the
        # demo's smaller pictures go, shown with their sizes), then back to the default.
        wait_for(page, re.compile(r"Excludes 0 of \d+ training images smaller than 200x150"))
        width = page.get_by_label("Minimum width (px)")  # type: ignore[attr-defined]
        width.fill("480")
        width.press("Enter")
        wait_for(page, re.compile(r"Excludes [1-9]\d* of \d+ training images smaller than 480x150"))
        page.locator('[data-testid="stDataFrame"]').filter(has_text="dropped by class").wait_for()  # type: ignore[attr-defined]
        page.get_by_text(re.compile(r"^(Dealer|Stock|Placeholder) · \d+x\d+$")).first.wait_for()  # type: ignore[attr-defined]
        pictures_drawn(page)
        shot("size")
        width.fill("200")
        width.press("Enter")
        wait_for(page, re.compile(r"Excludes 0 of \d+ training images smaller than 200x150"))
        click(page, "Apply: drop images under 200x150", "Size filter applied to version 2.")

        # 3. Prune: the conflicting cluster comes first. Keep the original, drop the copy.
        wait_for(page, "Large view: one image and its decision")
        pictures_drawn(page)
        shot("prune")
        first = page.locator(".st-key-prune-image").get_by_role("combobox").input_value()  # type: ignore[attr-defined]
        assert first.startswith("1. conflict"), first
        assert choose_image(page, original).split(".")[0] in ("1", "2")
        record(page, original, "keep")
        assert choose_image(page, copy).split(".")[0] in ("1", "2")
        record(page, copy, "drop", DROP_REASON)
        # The likely label errors, ranked by cleanlab once the ranking is on: the flipped label
        # (a Dealer photo fixed as Placeholder) is among the likeliest.
        ranking = page.locator(".st-key-curation-rank")  # type: ignore[attr-defined]
        assert not ranking.locator("input").is_checked()
        ranking.get_by_text("Rank likely label errors").click()
        wait_for(page, "Share of each advertiser's images flagged as likely label errors")
        found = choose_image(page, flipped)
        assert re.match(r"\d+\. label issue \d+ · Placeholder", found), found
        assert int(found.split(".")[0]) <= 12, found
        page.get_by_text("Suggested: Dealer").wait_for()  # type: ignore[attr-defined]
        pictures_drawn(page)
        shot("prune-flipped")
        record(page, flipped, "relabel → Dealer")
        with demo.sessions() as session:
            fixes_after = session.scalar(select(func.count()).select_from(ManualFix))
        assert fixes_after == fixes_before + 1  # one team fix, in the history
        assert developer_fixes(demo, flipped) == [("developer", "Dealer")]
        wait_for(page, re.compile(r"applies 3 decisions \(1 relabels\)"))
        shot("prune-decided")
        click(page, "Apply: prune", "Prune applied to version 2.")

        # 4. Crop: before and after, side by side.
        # (The embedded border trim reads every training image's pixels: the slowest preview.)
        wait_for(page, re.compile(r"Records a border crop for [1-9]\d* images"), seconds=90)
        page.get_by_text(re.compile(r" · \d+x\d+ → \d+x\d+$")).first.wait_for()  # type: ignore[attr-defined]
        pictures_drawn(page)
        shot("crop")
        click(page, "Apply: record the crops", "Crop applied to version 2.", seconds=90)

        # 5. Split: the charts before Apply; then undo it and apply it again.
        wait_for(page, re.compile(r"Assigns \d+ images to train and \d+ to test"))
        page.locator('[data-testid="stVegaLiteChart"]').first.wait_for()  # type: ignore[attr-defined]
        page.wait_for_timeout(500)  # type: ignore[attr-defined]  # (a beat for the charts to draw)
        shot("split")
        click(page, "Apply: split train/test", "Split applied to version 2.")
        click(page, "Undo last step: Split", "Split undone.")
        new_rows = [r for r in version_manifest(demo.sessions, 2) if r.origin.startswith("fix:")]
        assert {row.split for row in new_rows} == {None}  # (the parent's rows keep theirs)
        wait_for(page, re.compile(r"Assigns \d+ images to train and \d+ to test"))
        click(page, "Apply: split train/test", "Split applied to version 2.")

        # A reload keeps the draft: it lives in the database, not in the page.
        page.reload()  # type: ignore[attr-defined]
        page.get_by_role("heading", name="Draft version 2").wait_for()  # type: ignore[attr-defined]

        # 6. Extend, 7. Balance (charts, warnings), then freeze.
        wait_for(page, re.compile(r"Version 2 = \d+ parent images \+ \d+ new"))
        shot("extend")
        click(page, "Apply: confirm the extended version", "Extend applied to version 2.")
        wait_for(page, re.compile(r"Records the balance check .* 0 warnings"))
        # A stricter check (no class under 35% of a split): its warnings show before Apply.
        thumb = page.locator(".st-key-min-share").get_by_role("slider")  # type: ignore[attr-defined]
        thumb.focus()
        for _ in range(5):
            thumb.press("PageUp")  # (+0.05 each)
        wait_for(page, re.compile(r"classes under 35% of a split warned about\): [1-9]\d* warn"))
        warnings = page.locator('[data-testid="stAlertContentWarning"]')  # type: ignore[attr-defined]
        warnings.filter(has_text="under 35%").first.wait_for()
        page.locator('[data-testid="stVegaLiteChart"]').nth(1).wait_for()  # type: ignore[attr-defined]
        page.wait_for_timeout(500)  # type: ignore[attr-defined]
        shot("balance")
        click(page, "Apply: confirm the balance", "Balance applied to version 2.")
        click(page, "Freeze…", "Freeze version 2?")
        click(page, "Yes, freeze", "Version 2 frozen")
        wait_for(page, "Starts a draft from version 2")  # the next pull, from version 2
        shot("frozen")

        with demo.sessions() as session:
            version = get_version(session, 2)
        assert (version.state, version.parent) == ("frozen", 1)
        manifest = version_manifest(demo.sessions, 2)
        rows = manifest.by_sha256()
        assert rows[original].exclusion is None
        assert rows[copy].exclusion == f"pruned: {DROP_REASON}"
        assert rows[flipped].image_type == "Dealer" and rows[flipped].exclusion is None
        assert "by developer" in rows[flipped].origin
        assert not [row for row in manifest if str(row.exclusion).startswith(CONFLICT)]

        # Headless: the CLI exports it (leak-free, as a trainer reads it) and replays it.
        def cli(*args: str) -> dict:
            return dict(json.loads(run_cli(app_settings, monkeypatch, capsys, *args)))

        # The fixed images the CDN moved before any archiving round could fetch them are dropped
        # at the pull, saying why (as the CLI's build does): the export needs no more bytes.
        moved = [row for row in manifest if row.exclusion == NOT_ARCHIVED]
        assert moved and not any(demo.archive.has(row.sha256) for row in moved)
        out = tmp_path / "export"
        exported = cli("dataset", "export", "2", "--out", str(out), "--json")
        assert exported["images"] == len(manifest.included())
        exported_rows = {row["sha256"]: row for row in check_export(out, demo.archive)}
        assert exported_rows[flipped]["image_type"] == "Dealer"
        assert copy not in exported_rows and original in exported_rows
        replayed = cli("dataset", "replay", "2", "--json")
        assert replayed["same"] is True
        assert replayed["replayed_sha256"] == version.manifest_sha256
