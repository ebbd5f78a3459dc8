"""Dataset versions as user actions, on a real database (SQLite and PostgreSQL) and real bytes."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.datasets import archive_counts
from db.fixes import FixChange
from db.models import ArchiveEntry, ArchiveState, ManualFix, Role, SitemapItem
from tagging.curation.duplicates import CONFLICT
from tagging.curation.manifest import Manifest
from tagging.curation.split import find_leaks
from tagging.datasets.archive import LocalArchive
from tagging.datasets.service import (
    NOT_ARCHIVED,
    archive_pending,
    build_version,
    export_version,
    freeze,
    list_versions,
    pull_fixes,
    replay_version,
    show_version,
    version_manifest,
)
from tagging.errors import Conflict, NotFoundError, PermissionDenied
from tagging.fixes import record_fixes
from tagging.ingest.images import hash_distance
from tests.tagging.datasets.world import ANALYST, DEVELOPER, FakeCDN, World, build_world
from tests.utils.factories import actor


@pytest.fixture
def world(sessions: sessionmaker[Session], tmp_path: Path) -> World:
    return build_world(sessions, tmp_path)


def test_build_export_is_leak_free_and_replays(
    sessions: sessionmaker[Session], world: World, tmp_path: Path
) -> None:
    report = build_version(sessions, DEVELOPER, world.archive, parent="latest", seed=3)
    assert report.version.number == 1 and report.version.state == "draft"
    # Every class in both splits, the conflicting pair excluded.
    for split in ("train", "test"):
        assert all(n > 0 for n in report.by_split[split].values()), report.by_split
    assert report.exclusions == {CONFLICT: 2}
    freeze(sessions, DEVELOPER, 1)

    out = tmp_path / "export"
    exported = export_version(sessions, world.archive, 1, out)
    assert exported.images == 28
    rows = list(csv.DictReader(io.StringIO((out / "manifest.csv").read_text())))
    assert list(rows[0]) == [
        "sha256",
        "path",
        "image_type",
        "color",
        "split",
        "advertiser",
        "page_url",
        "cluster",
        "origin",
    ]
    files = {p.relative_to(out).as_posix() for p in out.rglob("*.jpg")}
    assert files == {f"{r['split']}/{r['image_type']}/{r['sha256']}.jpg" for r in rows}
    # The proof, from the exported files themselves: no near-duplicate (pHash ≤ 6) and no
    # vehicle page on both sides.
    from tagging.ingest.images import perceptual_hash

    hashes = {
        p.stem: (p.parts[-3], perceptual_hash(PILImage.open(p).convert("RGB")))
        for p in out.rglob("*.jpg")
    }
    manifest = version_manifest(sessions, 1)
    # An uncropped image is exported as its archived bytes (a new encoding would move its pHash).
    uncropped = [row.sha256 for row in manifest.included() if row.crop is None]
    assert uncropped
    for sha in uncropped:
        file = next(out.rglob(f"{sha}.jpg"))
        assert hashlib.sha256(file.read_bytes()).hexdigest() == sha
    phash_of = {row.sha256: row.phash for row in manifest}
    for a, (split_a, _) in hashes.items():
        for b, (split_b, _) in hashes.items():
            if split_a != split_b:
                assert hash_distance(phash_of[a] or "", phash_of[b] or "") > 6
    pages: dict[str, set[str]] = {}
    for r in rows:
        pages.setdefault(r["page_url"], set()).add(r["split"])
    assert all(len(sides) == 1 for sides in pages.values())
    assert find_leaks(manifest) == []

    replayed = replay_version(sessions, world.archive, 1)
    assert replayed.same and replayed.same_inputs


def test_the_near_duplicate_pair_stays_on_one_side(
    sessions: sessionmaker[Session], world: World
) -> None:
    build_version(sessions, DEVELOPER, world.archive, parent=None, seed=1)
    by_sha = version_manifest(sessions, 1).by_sha256()
    original, copy = by_sha[world.shas[0]], by_sha[world.shas[28]]
    assert original.cluster is not None and original.cluster == copy.cluster
    assert original.split == copy.split is not None


def test_a_frozen_version_refuses_changes_and_a_child_extends_it(
    sessions: sessionmaker[Session], world: World
) -> None:
    build_version(sessions, DEVELOPER, world.archive, seed=1)
    with pytest.raises(Conflict):
        build_version(sessions, DEVELOPER, world.archive, parent=1)  # a draft parent
    freeze(sessions, DEVELOPER, 1)
    with pytest.raises(Conflict):
        freeze(sessions, DEVELOPER, 1)
    # No new fix since: the child is the parent's rows, every one carried.
    child = build_version(sessions, DEVELOPER, world.archive, parent="latest", seed=1)
    assert child.version.parent == 1 and child.version.inputs["new_rows"] == 0
    rows = version_manifest(sessions, 2)
    assert all(row.origin == "parent:1" for row in rows)
    assert [v.number for v in list_versions(sessions)] == [2, 1]
    assert show_version(sessions, 2).by_split == show_version(sessions, 1).by_split


def test_an_analyst_may_not_build_or_freeze(sessions: sessionmaker[Session], world: World) -> None:
    with pytest.raises(PermissionDenied):
        build_version(sessions, ANALYST, world.archive)
    build_version(sessions, actor(Role.ADMIN, "root"), world.archive)
    with pytest.raises(PermissionDenied):
        freeze(sessions, ANALYST, 1)


def test_pull_takes_team_fixes_with_the_image_facts(
    sessions: sessionmaker[Session], world: World
) -> None:
    with sessions() as session:
        rows = pull_fixes(session, world.archive)
    assert len(rows) == 30
    first = next(r for r in rows if r.sha256 == world.shas[0])
    assert first.origin.startswith("fix:") and first.origin.endswith("by alice")
    assert first.advertiser == "Sunrise Motors" and first.page_url.endswith("/p0")
    assert (first.width, first.height) == (320, 240) and first.phash is not None


def test_archive_round_trip(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "a")
    sha = archive.put(b"bytes of a picture")
    assert archive.has(sha) and archive.get(sha) == b"bytes of a picture"
    assert archive.put(b"bytes of a picture") == sha
    (tmp_path / "a" / archive.key(sha)).write_bytes(b"tampered")
    with pytest.raises(NotFoundError):
        archive.get(sha)


def test_a_failed_archive_fetch_keeps_the_fix_and_a_later_round_stores_it(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    world = build_world(sessions, tmp_path, archived=False)
    with sessions() as session:
        fixes = session.scalars(select(ManualFix)).all()
        assert len(fixes) >= 30
        assert archive_counts(session)["pending"] == 30  # queued by the fixes themselves
    down = FakeCDN(world.urls, down=True)
    report = archive_pending(sessions, world.archive, down)  # type: ignore[arg-type]
    assert report.failed == 30 and report.stored == 0
    with sessions() as session:
        assert len(session.scalars(select(ManualFix)).all()) == len(fixes)
        entry = session.scalars(select(ArchiveEntry)).first()
        assert entry is not None and entry.state == ArchiveState.PENDING
        assert entry.attempts == 1 and "refused" in (entry.last_error or "")
    up = FakeCDN(world.urls)
    report = archive_pending(sessions, world.archive, up)  # type: ignore[arg-type]
    assert report.stored == 30
    assert all(world.archive.has(sha) for sha in world.shas)


def test_export_names_images_missing_from_the_archive(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    world = build_world(sessions, tmp_path, archived=False)
    build_version(sessions, DEVELOPER, world.archive, seed=1)
    with pytest.raises(NotFoundError, match="not in the archive"):
        export_version(sessions, world.archive, 1, tmp_path / "out")
    # A build with a client archives what it pulls first.
    build_version(
        sessions,
        DEVELOPER,
        world.archive,
        parent=None,
        client=FakeCDN(world.urls),  # type: ignore[arg-type]
    )
    export_version(sessions, world.archive, 2, tmp_path / "out")


def test_an_image_the_cdn_lost_before_it_was_archived_is_dropped_with_its_reason(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    world = build_world(sessions, tmp_path, archived=False)
    gone = sorted(world.urls)[0]  # the CDN moved it before anyone archived it
    cdn = FakeCDN({url: body for url, body in world.urls.items() if url != gone})
    built = build_version(
        sessions,
        DEVELOPER,
        world.archive,
        parent=None,
        client=cdn,  # type: ignore[arg-type]
    )
    manifest = version_manifest(sessions, built.version.number)
    dropped = [row for row in manifest if row.exclusion == NOT_ARCHIVED]
    assert len(dropped) == 1 and not world.archive.has(dropped[0].sha256)
    assert all(world.archive.has(row.sha256) for row in manifest.included())
    # The export no longer stops on it, and the replay (no archive needed) is exact.
    export_version(sessions, world.archive, built.version.number, tmp_path / "out")
    assert replay_version(sessions, world.archive, built.version.number).same


def test_a_new_fix_after_the_build_does_not_change_the_replay(
    sessions: sessionmaker[Session], world: World
) -> None:
    build_version(sessions, DEVELOPER, world.archive, seed=1)
    with sessions.begin() as session:
        item = session.scalars(select(SitemapItem).order_by(SitemapItem.id)).first()
        assert item is not None
        new = "Stock" if item.image_type != "Stock" else "Dealer"
        record_fixes(session, ANALYST, [FixChange(item.id, "image_type", new)], refresh=False)
    assert replay_version(sessions, world.archive, 1).same


def test_rows_round_trip_through_the_database(
    sessions: sessionmaker[Session], world: World
) -> None:
    report = build_version(sessions, DEVELOPER, world.archive, seed=5)
    manifest = version_manifest(sessions, 1)
    assert isinstance(manifest, Manifest)
    assert manifest.manifest_sha256() == report.version.manifest_sha256
