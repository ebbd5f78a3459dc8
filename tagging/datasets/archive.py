"""The archive of training images: content-addressed bytes (SHA-256 → bytes), kept for good.

A fixed image is worth keeping: the advertiser's CDN may drop or rename it later, and the fix would
then be useless for training. The archive stores the original bytes under their SHA-256, so the
same picture under two URLs is stored once, a stored file can be checked against its name, and a
manifest row's ``path`` (:meth:`ArchiveStore.key`) never moves.

:class:`LocalArchive` (a folder, ``Settings.archive_dir``) is the default. An S3-compatible bucket
is a second implementation of :class:`ArchiveStore` (put/get/has over ``key``); it is not written
yet, because boto3 is not among the project's dependencies.

No database here: the queue of images to archive is ``db.datasets``, the fetching
:mod:`tagging.datasets.service`.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

from tagging.config import Settings
from tagging.errors import InvalidInput, NotFoundError

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class ArchiveStore(Protocol):
    """Where archived image bytes live, by content SHA-256."""

    def key(self, sha256: str) -> str:
        """The stored path of ``sha256`` (what a manifest row's ``path`` records)."""
        ...

    def has(self, sha256: str) -> bool:
        """Whether the bytes of ``sha256`` are stored."""
        ...

    def put(self, data: bytes) -> str:
        """Store ``data`` (a no-op when present); returns its SHA-256."""
        ...

    def get(self, sha256: str) -> bytes:
        """The bytes of ``sha256``, checked against it.

        Raises:
            NotFoundError: Not stored, or the stored file no longer matches its hash.
        """
        ...


class LocalArchive:
    """The archive in a local folder: ``<root>/<sha[:2]>/<sha>``, written atomically.

    Args:
        root: The folder (created on the first write).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def key(self, sha256: str) -> str:
        """``ab/abcdef…``: relative to the root, so the folder can move."""
        _check(sha256)
        return f"{sha256[:2]}/{sha256}"

    def has(self, sha256: str) -> bool:
        """Whether the file exists (its content is checked on :meth:`get`)."""
        return (self.root / self.key(sha256)).is_file()

    def put(self, data: bytes) -> str:
        """Store ``data`` under its SHA-256; a file already there is left alone."""
        sha = hashlib.sha256(data).hexdigest()
        target = self.root / self.key(sha)
        if target.is_file():
            return sha
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target, then rename: a reader never sees half a file, and two
        # processes storing the same picture both end with the same complete one.
        fd, tmp = tempfile.mkstemp(prefix=".put-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha

    def get(self, sha256: str) -> bytes:
        """The bytes, checked against their name (a corrupt file is an error, never data)."""
        path = self.root / self.key(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"image {sha256[:12]}… is not in the archive") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise NotFoundError(f"archived image {sha256[:12]}… is corrupt: its hash differs")
        return data


def archive_from_settings(settings: Settings) -> ArchiveStore:
    """The archive the settings name: the local folder ``settings.archive_dir``."""
    return LocalArchive(settings.archive_dir)


def _check(sha256: str) -> None:
    # The hash becomes a path component: refuse anything else.
    if not _SHA256_RE.match(sha256):
        raise InvalidInput(f"not a SHA-256: {sha256!r:.80}")


__all__ = ["ArchiveStore", "LocalArchive", "archive_from_settings"]
