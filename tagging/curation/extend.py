"""Extend a version: the parent's rows plus the new ones, relabels recorded as origins."""

from __future__ import annotations

from collections.abc import Iterable

from tagging.curation.manifest import Manifest, ManifestRow, origin_parent, relabel


def extend(
    parent: Manifest, new_rows: Iterable[ManifestRow], *, parent_version: str | None
) -> Manifest:
    """The starting manifest of a new version: ``parent`` plus ``new_rows``.

    - A parent row becomes ``origin = parent:<parent_version>`` and keeps its split (so a test
      image stays in test across versions), its exclusion (a pruned image stays pruned) and its
      crop. Its cluster is cleared: clusters are numbered per version, by the duplicates step.
    - A new row whose ``sha256`` is already in the parent is a new fix of a known image: the
      parent's row takes its labels, and its origin records the change
      (``fix:17 by alice; relabel Stock->Dealer``); a fix that changes nothing leaves the row alone.
    - Among new rows with the same ``sha256`` (one picture fixed twice) the last one wins, as the
      newest fix is the team's current label; pass them in fix order.

    Rows the later steps exclude stay in the manifest with their reason, so "minus the pruned
    ones" is what :meth:`Manifest.included` and the export give.

    Args:
        parent: The parent version's manifest (empty for a first version).
        new_rows: The accepted new rows (e.g. the team fixes since the cut-off), split ``None``.
        parent_version: The parent's version id, recorded in the carried rows' origins.

    Returns:
        The extended manifest.
    """
    rows: dict[str, ManifestRow] = {}
    for row in parent:
        origin = origin_parent(parent_version) if parent_version is not None else row.origin
        rows[row.sha256] = row.replace(origin=origin, cluster=None)
    latest: dict[str, ManifestRow] = {}
    for row in new_rows:
        latest[row.sha256] = row
    for sha, row in latest.items():
        old = rows.get(sha)
        if old is None:
            rows[sha] = row.replace(cluster=None)
        else:
            rows[sha] = relabel(old, image_type=row.image_type, color=row.color, fix=row.origin)
    return Manifest(rows.values())
