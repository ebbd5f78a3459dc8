"""Recipes: JSON round trip, validation, and replay that gives a byte-identical manifest."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import numpy as np
import pytest

from db.vocab import IMAGE_TYPES
from tagging.curation.balance import exclusions_by_reason
from tagging.curation.manifest import Manifest, origin_generated
from tagging.curation.prune import Decision
from tagging.curation.recipe import (
    CropStep,
    CurationInputs,
    DuplicatesStep,
    PruneStep,
    Recipe,
    SizeStep,
    SplitStep,
    crop_step,
    replay,
    stages,
)
from tagging.curation.split import NamedTestSet, find_leaks
from tagging.errors import InvalidInput
from tests.tagging.curation.factory import phash, picture, row, sha, slightly_changed

CUTOFF = datetime(2025, 1, 31, tzinfo=UTC)


def inputs() -> CurationInputs:
    """A parent of 30 generated images and 40 new fixes: small ones, a conflicting pair, pages."""
    rng = random.Random(4)

    def h() -> str:
        return f"{rng.getrandbits(64):016x}"

    parent = Manifest(
        row(
            f"gen{i}",
            IMAGE_TYPES[i % 3],
            origin=origin_generated(1),
            phash=h(),
            split="test" if i % 5 == 0 else "train",
        )
        for i in range(30)
    )
    original = picture(3)
    new = [
        row("tiny", "Dealer", width=90, height=60, phash=h(), origin="fix:1 by alice"),
        row("dup", "Dealer", phash=phash(original), origin="fix:2 by alice", advertiser="acme"),
        row("dup2", "Stock", phash=phash(slightly_changed(original)), origin="fix:3 by bob"),
    ]
    for i in range(37):
        new.append(
            row(
                f"fix{i}",
                IMAGE_TYPES[i % 3],
                phash=h(),
                origin=f"fix:{10 + i} by carol",
                advertiser=("acme", "zoom")[i % 2],
                page_url=f"https://d.test/v/{i // 3}",
            )
        )
    vectors = {r.sha256: np.arange(4.0) + i for i, r in enumerate([*parent, *new])}
    return CurationInputs(parent=parent, new_rows=tuple(new), embeddings=vectors)


def recipe() -> Recipe:
    base = Recipe.default(
        seed=7,
        parent="3",
        cutoff=CUTOFF,
        min_size=(200, 150),
        named_test_sets=[NamedTestSet("zoom-hard", "zoom")],
    )
    decisions = (
        Decision(sha("fix4"), "drop", reason="client misclassification"),
        Decision(sha("fix5"), "relabel", image_type="Dealer", origin="fix:99 by dave"),
    )
    return base.with_step(PruneStep(decisions)).with_step(
        crop_step({sha("fix6"): (0, 20, 640, 460)})
    )


def test_replay_is_byte_identical_and_independent_of_input_order() -> None:
    first = replay(recipe(), inputs())
    second = replay(Recipe.from_json(recipe().to_json()), inputs())
    assert first.to_csv() == second.to_csv()
    assert first.manifest_sha256() == second.manifest_sha256()
    given = inputs()
    shuffled = CurationInputs(
        parent=given.parent,
        new_rows=tuple(random.Random(1).sample(given.new_rows, len(given.new_rows))),
        embeddings=given.embeddings,
    )
    assert replay(recipe(), shuffled).to_csv() == first.to_csv()


def test_replay_runs_every_step() -> None:
    manifest = replay(recipe(), inputs())
    rows = manifest.by_sha256()
    assert len(manifest) == 70
    assert exclusions_by_reason(manifest) == {
        "client misclassification": 1,
        "conflicting near-duplicates": 2,
        "too small": 1,
    }
    assert rows[sha("gen0")].origin == "parent:3" and rows[sha("gen0")].split == "test"
    assert rows[sha("fix5")].origin == "fix:99 by dave; relabel Placeholder->Dealer"
    assert rows[sha("fix6")].crop == (0, 20, 640, 460)
    assert {r.split for r in manifest if r.advertiser == "zoom" and r.included} == {"test"}
    assert all(r.split in ("train", "test") for r in manifest.included())
    assert find_leaks(manifest) == []


def test_a_different_seed_or_step_changes_the_manifest() -> None:
    base = replay(recipe(), inputs()).manifest_sha256()
    other = Recipe.default(seed=7, parent="3", cutoff=CUTOFF, min_size=(50, 50))
    assert replay(other, inputs()).manifest_sha256() != base


def test_stages_show_each_step() -> None:
    names = [name for name, _ in stages(recipe(), inputs())]
    assert names == ["extend", "size", "duplicates", "drop_conflicts", "prune", "crop", "split"]


def test_the_json_round_trips_every_step() -> None:
    full = (
        recipe()
        .with_step(DuplicatesStep(max_distance=4, embedding_threshold=0.97), before_split=False)
        .with_step(SplitStep(test_fraction=0.25, keep_existing=False), before_split=False)
    )
    text = full.to_json()
    again = Recipe.from_json(text)
    assert again == full
    assert again.to_json() == text
    assert again.cutoff == CUTOFF
    crops = [step for step in again.steps if isinstance(step, CropStep)]
    assert crops[0].boxes == ((sha("fix6"), (0, 20, 640, 460)),)


def test_embedding_duplicates_replay_from_the_inputs() -> None:
    with_embeddings = Recipe(seed=1, steps=(DuplicatesStep(embedding_threshold=0.9999),))
    clustered = replay(with_embeddings, inputs())
    assert any(r.cluster is not None for r in clustered)
    with pytest.raises(InvalidInput):
        replay(with_embeddings, CurationInputs(parent=inputs().parent))


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"format": 2, "seed": 1}',
        '{"format": 1}',
        '{"format": 1, "seed": 1, "steps": [{"step": "rotate"}]}',
        '{"format": 1, "seed": 1, "steps": [{"step": "size", "min_width": 1}]}',
        '{"format": 1, "seed": 1, "steps": [{"step": "split"}]}',
        '{"format": 1, "seed": 1, "cutoff": "2025-01-31T00:00:00"}',
    ],
)
def test_bad_recipes_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        Recipe.from_json(text)


def test_a_split_needs_the_clusters_first() -> None:
    with pytest.raises(InvalidInput, match="duplicates step"):
        Recipe(seed=1, steps=(SizeStep(1, 1), SplitStep()))
