"""The Dataset curation page in AppTest: who sees it, and a draft walked from pull to freeze on a
small world of real JPEGs (tests/tagging/datasets/world.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker
from streamlit.testing.v1 import AppTest

from db.datasets import get_version
from db.models import Role
from tagging.datasets.service import version_manifest
from tests.tagging.datasets.world import World, build_world

PAGE = "views/curation.py"


@pytest.fixture
def world(app_db: sessionmaker[Session], tmp_path: Path) -> World:
    # The app's archive is <data dir>/archive, and the data dir is tmp_path (app_db).
    return build_world(app_db, tmp_path)


def shown(element: object) -> str:
    """An element's text as a person reads it (the page escapes Markdown punctuation)."""
    return str(element.value).replace("\\", "")  # type: ignore[attr-defined]


def click(at: AppTest, label: str) -> AppTest:
    (button,) = [b for b in at.button if b.label == label]
    button.click()
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def step(at: AppTest, name: str) -> AppTest:
    at.radio(key="curation-step").set_value(name).run()
    return at


@pytest.mark.parametrize("role", [Role.ANALYST, Role.MANAGER])
def test_other_roles_do_not_see_the_page(open_app: Callable[..., AppTest], role: Role) -> None:
    at = open_app(role)
    assert not at.exception
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page(PAGE)


@pytest.mark.parametrize("role", [Role.DEVELOPER, Role.ADMIN])
def test_developers_and_admins_see_it(open_app: Callable[..., AppTest], role: Role) -> None:
    at = open_app(role, PAGE)
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Dataset curation"]
    assert any(b.label == "Apply: start the draft" for b in at.button)


def test_preview_apply_undo_freeze(
    open_app: Callable[..., AppTest], app_db: sessionmaker[Session], world: World
) -> None:
    at = open_app(Role.DEVELOPER, PAGE)
    assert not at.exception, at.exception
    # The pull's preview: what it would take, before anything is stored.
    assert "30 fixed images" in shown(at.info[0])
    assert len(at.dataframe) >= 3  # by class, by advertiser, by analyst (+ the versions)
    click(at, "Apply: start the draft")
    assert "Draft version 1 started." in shown(at.success[0])
    assert at.radio(key="curation-step").value == "size"

    # Size: the preview names what goes; Apply does it; Undo takes it back.
    at.number_input(key="min-w").set_value(310).run()
    assert "Excludes 2 of 30" in shown(at.info[0])
    click(at, "Apply: drop images under 310x150")
    assert len(version_manifest(app_db, 1).included()) == 28
    assert at.radio(key="curation-step").value == "prune"
    click(at, "Undo last step: Size filter")
    assert len(version_manifest(app_db, 1).included()) == 30
    at.number_input(key="min-w").set_value(100).run()
    click(at, "Apply: drop images under 100x150")

    # Prune: the conflicting pair first; one decision through the large view.
    assert "excludes 2 images" in shown(at.info[0])
    at.selectbox(key="prune-image").set_value(world.shas[1]).run()
    at.radio(key=f"prune-decision-{world.shas[1][:16]}").set_value("keep")  # (a form: no run)
    click(at, "Record decision")
    assert "1 decision(s) recorded." in shown(at.success[0])
    click(at, "Apply: prune")
    assert version_manifest(app_db, 1).by_sha256()[world.shas[1]].exclusion is None

    click(at, "Apply: record the crops")
    click(at, "Apply: split train/test")
    assert at.radio(key="curation-step").value == "extend"
    assert "training images" in shown(at.info[0])
    click(at, "Apply: confirm the extended version")
    assert at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")
    click(at, "Apply: confirm the balance")

    click(at, "Freeze…")
    assert "Freeze version 1?" in shown(at.warning[0])
    click(at, "Yes, freeze")
    assert "Version 1 frozen" in shown(at.success[0])
    with app_db() as session:
        assert get_version(session, 1).state == "frozen"
    # No draft any more: the page offers the next pull, from version 1.
    assert any(b.label == "Apply: start the draft" for b in at.button)


def test_a_reload_keeps_the_draft(
    open_app: Callable[..., AppTest], app_db: sessionmaker[Session], world: World
) -> None:
    at = open_app(Role.DEVELOPER, PAGE)
    click(at, "Apply: start the draft")
    click(at, "Apply: drop images under 200x150")
    again = open_app(Role.DEVELOPER, PAGE)  # a new browser session
    assert not again.exception
    assert again.subheader[0].value == "Draft version 1"
    assert again.radio(key="curation-step").value == "prune"
