"""The Dataset curation page's use cases, on SQLite and PostgreSQL, over real JPEG bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.advertisers import get_advertiser
from db.models import Finding, FindingState, ManualFix, SitemapItem
from db.vocab import ADVERTISER_PLACEHOLDER
from tagging.curation.duplicates import CONFLICT
from tagging.curation.split import find_leaks
from tagging.datasets.drafts import (
    PAGE_STEPS,
    BalanceParams,
    CropParams,
    DecisionRequest,
    ExtendParams,
    PruneParams,
    SizeParams,
    SplitParams,
    apply_step,
    current_draft,
    decide,
    freeze,
    preview_pull,
    preview_step,
    start_draft,
    thumbnail,
    undo_step,
)
from tagging.datasets.service import NOT_ARCHIVED, replay_version, version_manifest
from tagging.detectors.refresh import refresh_findings
from tagging.errors import Conflict, InvalidInput, PermissionDenied
from tests.tagging.datasets.world import ANALYST, DEVELOPER, FakeCDN, World, build_world


@pytest.fixture
def world(sessions: sessionmaker[Session], tmp_path: Path) -> World:
    return build_world(sessions, tmp_path)


def walk(sessions: sessionmaker[Session], world: World, number: int) -> None:
    """Apply every step after the prune with its defaults."""
    for params in (CropParams(), SplitParams(), ExtendParams(), BalanceParams()):
        apply_step(sessions, DEVELOPER, world.archive, number, params)


def test_preview_then_apply_then_undo_then_freeze(
    sessions: sessionmaker[Session], world: World
) -> None:
    pulled = preview_pull(sessions, DEVELOPER, world.archive, parent="latest")
    assert sum(pulled.counts["by class"].values()) == 30
    assert pulled.counts["by analyst"] == {"alice": 30}
    assert set(pulled.counts["by advertiser"]) == {"Sunrise Motors", "Summit Auto Group"}
    assert len(pulled.examples) == 12 and all(e.archived for e in pulled.examples)

    draft = start_draft(sessions, DEVELOPER, world.archive, "latest", None, seed=3)
    assert draft.applied == ("pull",) and draft.next_step == "size"
    assert current_draft(sessions, DEVELOPER) == draft

    # The size preview shows what would go, and stores nothing.
    preview = preview_step(sessions, DEVELOPER, world.archive, 1, SizeParams(310, 0))
    assert "Excludes 2 of 30" in preview.summary
    assert {e.sha256 for e in preview.examples} == {world.shas[28], world.shas[29]}
    assert version_manifest(sessions, 1).included().__len__() == 30
    draft = apply_step(sessions, DEVELOPER, world.archive, 1, SizeParams(310, 0))
    assert len(version_manifest(sessions, 1).included()) == 28
    # Undo gives them back, with the same manifest as before.
    before_sha = draft.version.manifest_sha256
    undone = undo_step(sessions, DEVELOPER, world.archive, 1)
    assert undone is not None and undone.applied == ("pull",)
    assert len(version_manifest(sessions, 1).included()) == 30
    draft = apply_step(sessions, DEVELOPER, world.archive, 1, SizeParams(100, 100))
    assert draft.version.manifest_sha256 != before_sha

    # Prune: the conflicting pair comes first in the review.
    prune = preview_step(sessions, DEVELOPER, world.archive, 1, PruneParams())
    conflict = [r for r in prune.review if r.kind == "conflict"]
    assert {r.example.sha256 for r in conflict} == {world.shas[1], world.shas[29]}
    assert prune.counts["excluded by reason"] == {CONFLICT: 2}
    # Keep the original, drop one other image: pending until the step is applied.
    outcome = decide(
        sessions,
        DEVELOPER,
        1,
        [
            DecisionRequest(world.shas[1], "keep"),
            DecisionRequest(world.shas[5], "drop", reason="blurry"),
        ],
    )
    assert set(outcome.draft.pending) == {world.shas[1], world.shas[5]}
    assert outcome.fix_ids == () and outcome.advertiser_ids == ()  # no relabel: no fix
    with pytest.raises(InvalidInput):
        decide(sessions, DEVELOPER, 1, [DecisionRequest(world.shas[6], "drop")])
    draft = apply_step(sessions, DEVELOPER, world.archive, 1, PruneParams())
    assert draft.pending == {}
    rows = version_manifest(sessions, 1).by_sha256()
    assert rows[world.shas[1]].exclusion is None
    assert (rows[world.shas[29]].exclusion or "").startswith(CONFLICT)
    assert rows[world.shas[5]].exclusion == "pruned: blurry"
    # Undoing the prune gives its decisions back as pending.
    undone = undo_step(sessions, DEVELOPER, world.archive, 1)
    assert undone is not None and set(undone.pending) == {world.shas[1], world.shas[5]}
    apply_step(sessions, DEVELOPER, world.archive, 1, PruneParams())

    with pytest.raises(Conflict):
        freeze(sessions, DEVELOPER, 1)  # steps left
    with pytest.raises(Conflict):
        apply_step(sessions, DEVELOPER, world.archive, 1, SplitParams())  # crop is next
    split = None
    apply_step(sessions, DEVELOPER, world.archive, 1, CropParams())
    split = preview_step(sessions, DEVELOPER, world.archive, 1, SplitParams())
    assert split.warnings == () and split.balance is not None
    apply_step(sessions, DEVELOPER, world.archive, 1, SplitParams())
    manifest = version_manifest(sessions, 1)
    assert find_leaks(manifest) == []
    extend = preview_step(sessions, DEVELOPER, world.archive, 1, ExtendParams())
    assert extend.counts["composition"]["new (team fixes)"] == 30
    apply_step(sessions, DEVELOPER, world.archive, 1, ExtendParams())
    apply_step(sessions, DEVELOPER, world.archive, 1, BalanceParams())
    frozen = freeze(sessions, DEVELOPER, 1)
    assert frozen.state == "frozen" and frozen.manifest_sha256 == manifest.manifest_sha256()
    assert current_draft(sessions, DEVELOPER) is None
    with pytest.raises(Conflict):
        undo_step(sessions, DEVELOPER, world.archive, 1)
    # The recipe replays to the same manifest.
    assert replay_version(sessions, world.archive, 1).same


def test_a_relabel_is_a_team_fix_in_the_history(
    sessions: sessionmaker[Session], world: World
) -> None:
    start_draft(sessions, DEVELOPER, world.archive, None, None, seed=1)
    apply_step(sessions, DEVELOPER, world.archive, 1, SizeParams())
    with sessions() as session:
        before = session.scalar(select(ManualFix.id).order_by(ManualFix.id.desc()).limit(1))
    outcome = decide(
        sessions, DEVELOPER, 1, [DecisionRequest(world.shas[29], "relabel", image_type="Dealer")]
    )
    assert outcome.fix_ids
    with sessions() as session:
        fix = session.get(ManualFix, outcome.fix_ids[0])
        assert fix is not None and fix.id > (before or 0)
        assert (fix.user, fix.field, fix.new_value) == ("dev", "image_type", "Dealer")
        # The image is on Summit's page only: its findings are the ones to refresh.
        summit = get_advertiser(session, "Summit Auto Group")
        assert outcome.advertiser_ids == (summit.id,)
    apply_step(sessions, DEVELOPER, world.archive, 1, PruneParams())
    row = version_manifest(sessions, 1).by_sha256()[world.shas[29]]
    assert row.image_type == "Dealer" and f"fix:{outcome.fix_ids[0]} by dev" in row.origin
    walk(sessions, world, 1)
    freeze(sessions, DEVELOPER, 1)
    # Replay reads the recorded window: the relabel's fix (after it) changes nothing.
    assert replay_version(sessions, world.archive, 1).same
    # The next version pulls that fix, carrying the parent's row with its label.
    child = start_draft(sessions, DEVELOPER, world.archive, "latest", None, seed=1)
    assert child.version.parent == 1 and child.version.inputs["new_rows"] >= 1
    assert child.named_test_sets == ()


def test_a_relabel_leaves_the_findings_refresh_to_the_caller(
    sessions: sessionmaker[Session], world: World
) -> None:
    """decide() answers without running the detectors; refreshing the advertisers it names
    brings the findings up to date (what the page asks its background refresher for)."""
    placeholder = world.shas[2]  # fixed to Placeholder by the analyst, so no color
    with sessions.begin() as session:
        item = session.scalars(
            select(SitemapItem).where(SitemapItem.image_key == f"{2:032x}")
        ).one()
        assert item.image_type == "Placeholder" and item.color is None
        item.color = "Blue"  # the trace an advertiser's retag leaves: a colored placeholder
        refresh_findings(session)
    query = select(Finding.state).where(Finding.detector == ADVERTISER_PLACEHOLDER)
    with sessions() as session:
        assert list(session.scalars(query)) == [FindingState.OPEN]
    start_draft(sessions, DEVELOPER, world.archive, None, None, seed=1)
    apply_step(sessions, DEVELOPER, world.archive, 1, SizeParams())
    outcome = decide(
        sessions, DEVELOPER, 1, [DecisionRequest(placeholder, "relabel", image_type="Dealer")]
    )
    assert outcome.fix_ids and outcome.advertiser_ids == (item.advertiser_id,)
    with sessions() as session:
        assert list(session.scalars(query)) == [FindingState.OPEN]  # not refreshed yet
    with sessions.begin() as session:
        for advertiser_id in outcome.advertiser_ids:
            refresh_findings(session, advertiser_id=advertiser_id)
    with sessions() as session:
        assert list(session.scalars(query)) == [FindingState.FIXED]


def test_crop_preview_shows_the_letterbox(
    sessions: sessionmaker[Session], world: World, tmp_path: Path
) -> None:
    import io

    from PIL import Image as PILImage

    start_draft(sessions, DEVELOPER, world.archive, None, None, seed=1)
    for params in (SizeParams(), PruneParams()):
        apply_step(sessions, DEVELOPER, world.archive, 1, params)
    preview = preview_step(sessions, DEVELOPER, world.archive, 1, CropParams())
    for example in preview.examples:
        assert example.crop is not None
        after = PILImage.open(io.BytesIO(thumbnail(world.archive, example.sha256, example.crop)))
        assert after.width <= 240


def test_roles_and_one_draft_at_a_time(sessions: sessionmaker[Session], world: World) -> None:
    with pytest.raises(PermissionDenied):
        preview_pull(sessions, ANALYST, world.archive)
    with pytest.raises(PermissionDenied):
        start_draft(sessions, ANALYST, world.archive, None, None, seed=1)
    start_draft(sessions, DEVELOPER, world.archive, None, None, seed=1)
    with pytest.raises(PermissionDenied):
        apply_step(sessions, ANALYST, world.archive, 1, SizeParams())
    with pytest.raises(Conflict):
        start_draft(sessions, DEVELOPER, world.archive, None, None, seed=1)
    with pytest.raises(Conflict):
        decide(sessions, DEVELOPER, 1, [DecisionRequest(world.shas[0], "keep")])  # size first
    # Undoing the pull throws the draft away.
    assert undo_step(sessions, DEVELOPER, world.archive, 1) is None
    assert current_draft(sessions, DEVELOPER) is None
    assert len(PAGE_STEPS) == 7


def test_the_pull_drops_a_fixed_image_the_archive_could_not_get(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    # The page's pull does what the CLI's build does: the CDN moved one image before anyone
    # archived it, so it is dropped with its reason, and the version still exports and replays.
    world = build_world(sessions, tmp_path, archived=False)
    gone = sorted(world.urls)[0]
    cdn = FakeCDN({url: body for url, body in world.urls.items() if url != gone})
    draft = start_draft(sessions, DEVELOPER, world.archive, None, None, 5, client=cdn)  # type: ignore[arg-type]
    manifest = version_manifest(sessions, draft.number)
    dropped = [row for row in manifest if row.exclusion == NOT_ARCHIVED]
    assert len(dropped) == 1 and not world.archive.has(dropped[0].sha256)
    assert all(world.archive.has(row.sha256) for row in manifest.included())
    for params in (SizeParams(100, 100), PruneParams()):
        apply_step(sessions, DEVELOPER, world.archive, draft.number, params)
    walk(sessions, world, draft.number)
    manifest = version_manifest(sessions, draft.number)
    assert [row.sha256 for row in manifest if row.exclusion == NOT_ARCHIVED] == [dropped[0].sha256]
    assert replay_version(sessions, world.archive, draft.number).same
