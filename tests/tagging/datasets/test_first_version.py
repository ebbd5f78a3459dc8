"""Version 1 (the generated set the production model learnt from) and the model-assisted prune."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.vocab import IMAGE_TYPES
from tagging.curation.duplicates import CONFLICT
from tagging.curation.split import NamedTestSet, find_leaks
from tagging.datasets.service import (
    GENERATED,
    build_version,
    ensure_first_version,
    export_version,
    first_version,
    freeze,
    render_generated,
    replay_version,
    show_version,
    version_manifest,
)
from tagging.errors import Conflict
from tagging.ml.model import production_version, read_metadata
from tagging.ml.synth import render_bytes
from tests.tagging.datasets.world import DEVELOPER, World, add_fixed_image, build_world


@pytest.fixture
def world(sessions: sessionmaker[Session], tmp_path: Path) -> World:
    return build_world(sessions, tmp_path)


def test_generated_images_are_the_bytes_training_decoded(models_dir: Path) -> None:
    from tagging.ingest.images import decode_image
    from tagging.ml.data import _render_range
    from tagging.ml.transforms import resize_to_array

    metadata = read_metadata(models_dir, production_version(models_dir) or "")
    config = metadata.training_data["config"]
    rendered = render_generated(config, workers=1)
    assert len(rendered) == sum(metadata.training_data["counts"].values())
    from tagging.datasets.service import _dataset_config

    _, arrays = _render_range((_dataset_config(config), 0, 6))
    for item, array in zip(rendered[:6], arrays, strict=True):
        decoded = decode_image(item.data).image
        assert np.array_equal(resize_to_array(decoded, config["input_size"]), array)


def test_first_version_records_the_generated_set_leak_free(
    sessions: sessionmaker[Session], world: World, models_dir: Path, tmp_path: Path
) -> None:
    report = first_version(sessions, DEVELOPER, world.archive, models_dir, workers=1)
    v = report.version
    assert v.number == 1 and v.state == "frozen" and v.parent is None
    metadata = read_metadata(models_dir, production_version(models_dir) or "")
    assert v.inputs["kind"] == GENERATED and v.inputs["seed"] == metadata.train_config["seed"]
    assert v.inputs["counts"] == metadata.training_data["counts"]
    assert v.inputs["generator"] == "tagging.ml.synth.render"
    # The model's own split leaked (the generator's templates are near-duplicates); this one not.
    assert v.inputs["model_split"]["leaking_pairs"] > 0
    manifest = version_manifest(sessions, 1)
    assert {row.origin for row in manifest} == {f"generated:seed={v.inputs['seed']}"}
    assert find_leaks(manifest) == []
    for split in ("train", "test"):
        assert set(report.by_split[split]) == set(IMAGE_TYPES)
        assert all(n > 0 for n in report.by_split[split].values())
    assert all(world.archive.has(row.sha256) for row in manifest)
    assert replay_version(sessions, world.archive, 1).same
    with pytest.raises(Conflict):
        first_version(sessions, DEVELOPER, world.archive, models_dir, workers=1)
    assert ensure_first_version(sessions, DEVELOPER, world.archive, models_dir) is None

    # The fixes extend it: the lineage ends in the generated set.
    child = build_version(sessions, DEVELOPER, world.archive, seed=1, models_dir=models_dir)
    assert child.version.parent == 1
    rows = version_manifest(sessions, 2)
    assert sum(row.origin == "parent:1" for row in rows) == len(manifest)
    assert sum(row.origin.startswith("fix:") for row in rows) == 30
    assert find_leaks(rows) == []
    freeze(sessions, DEVELOPER, 2)
    assert replay_version(sessions, world.archive, 2).same
    export_version(sessions, world.archive, 2, tmp_path / "out")


def test_build_with_the_model_ranks_a_flipped_label_and_reports_it(
    sessions: sessionmaker[Session], world: World, models_dir: Path
) -> None:
    first_version(sessions, DEVELOPER, world.archive, models_dir, workers=1)
    # A dealer photo the analyst labels Placeholder on purpose.
    dealer = render_bytes("Dealer", "Blue", random.Random(5), (480, 360), quality=85)
    flipped = add_fixed_image(sessions, world, dealer, "Placeholder", page="flipped")
    report = build_version(sessions, DEVELOPER, world.archive, seed=1, models_dir=models_dir)
    prune = report.prune
    top = [issue["sha256"] for issue in prune["label_issues"][:5]]
    assert flipped in top, prune["label_issues"][:5]
    issue = next(i for i in prune["label_issues"] if i["sha256"] == flipped)
    assert issue["given"] == "Placeholder" and issue["suggested"] == "Dealer"
    assert issue["origin"].endswith("by alice") and issue["advertiser"] == "Sunrise Motors"
    assert "Sunrise Motors" in prune["advertisers"]
    assert prune["model"] == production_version(models_dir)
    assert prune["embedded"] > 0 and prune["inference_seconds"] >= 0
    assert "label_issues" in prune and "advertisers" in prune
    # The pHash conflict of the world is excluded, as without the model.
    assert report.exclusions.get(CONFLICT, 0) >= 2
    # The report is stored with the version.
    assert show_version(sessions, 2).prune == prune


def test_named_test_sets_are_kept_across_versions(
    sessions: sessionmaker[Session], world: World
) -> None:
    summit = NamedTestSet("summit-copies", "Summit Auto Group")
    build_version(sessions, DEVELOPER, world.archive, seed=1, named_test_sets=[summit])
    rows = version_manifest(sessions, 1)
    assert {r.split for r in rows.included() if r.advertiser == "Summit Auto Group"} == {"test"}
    freeze(sessions, DEVELOPER, 1)
    child = build_version(sessions, DEVELOPER, world.archive, seed=1)
    assert '"summit-copies"' in child.version.recipe["recipe"]
    other = NamedTestSet("summit-copies", "Sunrise Motors")
    freeze(sessions, DEVELOPER, 2)
    again = build_version(sessions, DEVELOPER, world.archive, seed=1, named_test_sets=[other])
    assert '"Sunrise Motors"' in again.version.recipe["recipe"]
    assert '"Summit Auto Group"' not in again.version.recipe["recipe"]
