"""Extending a parent version: carried rows, new rows, relabels as origins."""

from __future__ import annotations

from tagging.curation.extend import extend
from tagging.curation.manifest import Manifest
from tests.tagging.curation.factory import row, sha

PARENT = Manifest(
    [
        row("p1", "Stock", origin="generated:seed=1", split="test", cluster=4),
        row("p2", "Dealer", origin="fix:3 by bob", split="train"),
        row("p3", "Dealer", origin="fix:4 by bob", exclusion="dropped: watermark"),
    ]
)


def test_parent_rows_are_carried_with_their_split_and_exclusion() -> None:
    out = extend(PARENT, [row("n1", "Placeholder", origin="fix:20 by carol")], parent_version="3")
    rows = out.by_sha256()
    assert len(out) == 4
    assert rows[sha("p1")].origin == "parent:3"
    assert rows[sha("p1")].split == "test"
    assert rows[sha("p1")].cluster is None  # renumbered by the duplicates step
    assert rows[sha("p3")].exclusion == "dropped: watermark"
    assert rows[sha("n1")].origin == "fix:20 by carol"
    assert rows[sha("n1")].split is None


def test_a_new_fix_of_a_parent_image_is_a_relabel_recorded_in_the_origin() -> None:
    fix = row("p1", "Dealer", origin="fix:17 by alice", split=None, path="elsewhere.jpg")
    out = extend(PARENT, [fix], parent_version="3").by_sha256()[sha("p1")]
    assert out.image_type == "Dealer"
    assert out.origin == "fix:17 by alice; relabel Stock->Dealer"
    assert out.split == "test"  # the image stays where it was
    assert out.path == PARENT.by_sha256()[sha("p1")].path


def test_a_fix_that_changes_nothing_keeps_the_parent_origin() -> None:
    same = row("p2", "Dealer", origin="fix:18 by alice")
    assert extend(PARENT, [same], parent_version="3").by_sha256()[sha("p2")].origin == "parent:3"


def test_the_last_fix_of_one_picture_wins() -> None:
    fixes = [row("n1", "Stock", origin="fix:30 by a"), row("n1", "Dealer", origin="fix:31 by b")]
    out = extend(Manifest(), fixes, parent_version=None).by_sha256()[sha("n1")]
    assert (out.image_type, out.origin) == ("Dealer", "fix:31 by b")


def test_without_a_parent_version_origins_stay() -> None:
    out = extend(PARENT, [], parent_version=None)
    assert out.by_sha256()[sha("p1")].origin == "generated:seed=1"
