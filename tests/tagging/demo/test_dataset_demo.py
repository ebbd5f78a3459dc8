"""The CLI builds a meaningful dataset version from the demo's staged team fixes, headless
(``python -m tagging dataset build --json``, then ``freeze``, ``export`` and ``replay``): every
class in both splits, the conflicting near-duplicate cluster excluded, the flipped label near the
top of cleanlab's ranking, an export with no near-duplicate or vehicle page across splits, and a
replay that gives the same manifest. (The page's way to the same, step by step in Chromium, is
tests/e2e/test_curation_browser.py; both start from tests/utils/dataset_demo.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from db.vocab import IMAGE_TYPES
from tagging.curation.duplicates import CONFLICT
from tagging.datasets.service import NOT_ARCHIVED, version_manifest
from tests.utils.dataset_demo import check_export, run_cli, staged_demo


@pytest.mark.slow
def test_the_cli_builds_a_meaningful_leak_free_version_from_the_demo(
    app_settings: object, demo_dir: Path, cdn: object, ml_server: object, models_dir: Path,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    with staged_demo(app_settings, demo_dir, cdn, models_dir) as demo:

        def cli(*args: str) -> dict:
            return dict(json.loads(run_cli(app_settings, monkeypatch, capsys, *args)))

        built = cli("dataset", "build", "--json")
        assert (built["version"], built["parent"], built["state"]) == (2, 1, "draft")
        for split in ("train", "test"):
            assert all(built["by_split"][split].get(name, 0) > 0 for name in IMAGE_TYPES), built
        manifest = version_manifest(demo.sessions, 2)
        rows = manifest.by_sha256()
        # The near-duplicate pair labelled two ways is left out, both of its images.
        original, copy = (demo.sha256_of(key) for key in demo.conflict_keys)
        assert str(rows[original].exclusion).startswith(CONFLICT), rows[original]
        assert str(rows[copy].exclusion).startswith(CONFLICT), rows[copy]
        assert built["exclusions"].get(CONFLICT, 0) >= 2, built["exclusions"]
        # The team's fixes of every class are in it (the split balances them with the parent's).
        fixes = [row for row in manifest if row.origin.startswith("fix:")]
        assert {r.image_type for r in fixes if r.included} == set(IMAGE_TYPES)
        # The fixed images the CDN moved before they were archived are dropped, saying why.
        moved = [row for row in fixes if row.exclusion == NOT_ARCHIVED]
        assert all(not demo.archive.has(row.sha256) for row in moved)
        # The flipped label (a Dealer photo fixed as Placeholder) is near the top of the ranking.
        flipped = demo.sha256_of(demo.flipped_key)
        top = built["prune"]["label_issues"][:10]
        assert flipped in [issue["sha256"] for issue in top], top

        assert cli("dataset", "freeze", "2", "--json") == {"version": 2, "state": "frozen"}
        out = tmp_path / "export"
        exported = cli("dataset", "export", "2", "--out", str(out), "--json")
        assert exported["images"] == len(manifest.included())
        shown = {row["sha256"] for row in check_export(out, demo.archive)}
        assert flipped in shown and original not in shown and copy not in shown
        replayed = cli("dataset", "replay", "2", "--json")
        assert replayed["same"] is True and replayed["replayed_sha256"] == built["manifest_sha256"]
