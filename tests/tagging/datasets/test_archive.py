"""The archive's two stores held to one contract: a local folder, and an S3-compatible bucket
behind a real S3 HTTP endpoint on loopback (moto's server, standing in for MinIO or AWS)."""

from __future__ import annotations

import hashlib
import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.datasets import archive_counts
from db.models import ArchiveEntry, ArchiveState
from tagging.config import Settings
from tagging.datasets.archive import (
    ArchiveStore,
    ArchiveUnavailable,
    LocalArchive,
    S3Archive,
    archive_from_settings,
)
from tagging.datasets.service import archive_pending
from tagging.errors import InvalidInput, NotFoundError
from tests.tagging.datasets.test_service import FakeCDN
from tests.tagging.datasets.world import build_world

KEY_ID = "AKIATAGDESKTEST0001"
SECRET = "tagdesk-test-secret-do-not-print"
PREFIX = "tagdesk/archive"
PICTURE = b"\xff\xd8 the bytes of a fixed picture \xff\xd9"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3 HTTP endpoint on a free loopback port, for this module's tests."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def raw_s3(s3_endpoint: str) -> Any:
    """A plain boto3 client on the endpoint: makes buckets and reaches past the archive."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    )


@pytest.fixture
def bucket(raw_s3: Any) -> str:
    """A fresh, versioned bucket: every write is kept as a version, so rewrites can be counted."""
    name = f"tagdesk-{uuid.uuid4().hex[:12]}"
    raw_s3.create_bucket(Bucket=name)
    raw_s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def s3_archive(bucket: str, endpoint: str, **kwargs: Any) -> S3Archive:
    return S3Archive(
        bucket,
        endpoint_url=endpoint,
        prefix=PREFIX,
        access_key_id=kwargs.pop("access_key_id", KEY_ID),
        secret_access_key=kwargs.pop("secret_access_key", SECRET),
        **kwargs,
    )


@dataclass
class Store:
    """An archive under test, and the two ways a test reaches past it."""

    archive: ArchiveStore
    tamper: Callable[[str, bytes], None]
    """Replace the stored bytes of a hash behind the archive's back."""
    writes: Callable[[str], int]
    """How many times the bytes of a hash were written."""


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        local = LocalArchive(tmp_path / "archive")
        inodes: dict[str, set[int]] = {}

        def local_tamper(sha: str, data: bytes) -> None:
            (local.root / local.key(sha)).write_bytes(data)

        def local_writes(sha: str) -> int:
            # Every write is a new file renamed into place: a new inode.
            path = local.root / local.key(sha)
            inodes.setdefault(sha, set()).add(path.stat().st_ino)
            return len(inodes[sha])

        return Store(local, local_tamper, local_writes)

    endpoint = request.getfixturevalue("s3_endpoint")
    name = request.getfixturevalue("bucket")
    raw = request.getfixturevalue("raw_s3")
    remote = s3_archive(name, endpoint)

    def s3_tamper(sha: str, data: bytes) -> None:
        raw.put_object(Bucket=name, Key=remote.object_name(sha), Body=data)

    def s3_writes(sha: str) -> int:
        listed = raw.list_object_versions(Bucket=name, Prefix=remote.object_name(sha))
        return len(listed.get("Versions", []))

    return Store(remote, s3_tamper, s3_writes)


# --- the contract, for both stores ---------------------------------------------------------------


def test_put_get_has_round_trip(store: Store) -> None:
    sha = hashlib.sha256(PICTURE).hexdigest()
    assert not store.archive.has(sha)
    assert store.archive.put(PICTURE) == sha
    assert store.archive.has(sha)
    assert store.archive.get(sha) == PICTURE
    # The manifest's path: the same layout whatever the store.
    assert store.archive.key(sha) == f"{sha[:2]}/{sha}"


def test_put_is_idempotent(store: Store) -> None:
    sha = store.archive.put(PICTURE)
    assert store.writes(sha) == 1
    assert store.archive.put(PICTURE) == sha
    assert store.writes(sha) == 1  # the second put wrote nothing
    assert store.archive.get(sha) == PICTURE


def test_a_missing_image_is_not_found(store: Store) -> None:
    store.archive.put(PICTURE)
    other = hashlib.sha256(b"never stored").hexdigest()
    assert not store.archive.has(other)
    with pytest.raises(NotFoundError, match="not in the archive"):
        store.archive.get(other)


def test_a_corrupt_image_is_an_error_never_data(store: Store) -> None:
    sha = store.archive.put(PICTURE)
    store.tamper(sha, b"other bytes")
    with pytest.raises(NotFoundError, match="corrupt"):
        store.archive.get(sha)


def test_only_a_sha256_names_an_image(store: Store) -> None:
    for bad in ("../../etc/passwd", "ABC", hashlib.sha256(b"x").hexdigest().upper()):
        with pytest.raises(InvalidInput):
            store.archive.has(bad)
        with pytest.raises(InvalidInput):
            store.archive.get(bad)


# --- the bucket: layout and failures ------------------------------------------------------------


def test_objects_are_content_addressed_under_the_prefix(
    s3_endpoint: str, bucket: str, raw_s3: Any
) -> None:
    archive = s3_archive(bucket, s3_endpoint)
    sha = archive.put(PICTURE)
    listed = raw_s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert [obj["Key"] for obj in listed] == [f"{PREFIX}/{sha[:2]}/{sha}"]


def assert_one_clean_line(error: ArchiveUnavailable) -> None:
    message = str(error)
    assert "\n" not in message
    assert SECRET not in message and "wrong-secret" not in message
    # Raised from None: botocore's exception (and its request details) is not chained on.
    assert error.__cause__ is None and error.__suppress_context__


def test_a_missing_bucket_is_a_clear_error(s3_endpoint: str) -> None:
    archive = s3_archive("no-such-bucket-here", s3_endpoint)
    sha = hashlib.sha256(PICTURE).hexdigest()
    for action in (
        lambda: archive.has(sha),
        lambda: archive.put(PICTURE),
        lambda: archive.get(sha),
    ):
        with pytest.raises(
            ArchiveUnavailable, match=r"'no-such-bucket-here' .* does not exist"
        ) as e:
            action()
        assert s3_endpoint in str(e.value)
        assert_one_clean_line(e.value)


def test_refused_credentials_are_a_clear_error(s3_endpoint: str, bucket: str) -> None:
    archive = s3_archive(
        bucket, s3_endpoint, access_key_id="AKIAWRONGWRONGWRONG1", secret_access_key="wrong-secret"
    )
    sha = hashlib.sha256(PICTURE).hexdigest()
    # moto checks signatures only once told to (for the whole process: restored below).
    requests.post(f"{s3_endpoint}/moto-api/reset-auth", data=b"0", timeout=5).raise_for_status()
    try:
        for action in (lambda: archive.has(sha), lambda: archive.get(sha)):
            with pytest.raises(ArchiveUnavailable, match="refused the credentials") as e:
                action()
            assert_one_clean_line(e.value)
    finally:
        requests.post(f"{s3_endpoint}/moto-api/reset-auth", data=b"inf", timeout=5)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_endpoint_fails_fast_with_a_clear_error() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    archive = s3_archive("tagdesk-archive", endpoint)
    started = time.monotonic()
    with pytest.raises(ArchiveUnavailable, match="cannot be reached") as e:
        archive.put(PICTURE)
    assert time.monotonic() - started < 5  # bounded retries, no minute-long backoff
    assert endpoint in str(e.value)
    assert_one_clean_line(e.value)


# --- chosen by the settings, used by the archiving round ------------------------------------------


def test_archive_from_settings_picks_the_bucket_when_one_is_configured(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    base = {"TAGGING_DATA_DIR": str(tmp_path)}
    local = archive_from_settings(Settings.from_env(base))
    assert isinstance(local, LocalArchive) and local.root == tmp_path / "archive"

    settings = Settings.from_env(
        {
            **base,
            "TAGGING_ARCHIVE_S3_URL": s3_endpoint,
            "TAGGING_ARCHIVE_S3_BUCKET": bucket,
            "TAGGING_ARCHIVE_S3_PREFIX": f"/{PREFIX}/",
            "AWS_ACCESS_KEY_ID": KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET,
        }
    )
    archive = archive_from_settings(settings)
    assert isinstance(archive, S3Archive)
    assert (archive.bucket, archive.endpoint_url, archive.prefix) == (bucket, s3_endpoint, PREFIX)
    assert archive_from_settings(settings) is archive  # one client per process, not per page
    sha = archive.put(PICTURE)
    assert archive.object_name(sha) == f"{PREFIX}/{sha[:2]}/{sha}"
    assert archive.get(sha) == PICTURE
    assert not (tmp_path / "archive").exists()


def test_archive_pending_stores_the_fixed_images_in_the_bucket(
    sessions: sessionmaker[Session], tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    world = build_world(sessions, tmp_path, archived=False)
    archive = s3_archive(bucket, s3_endpoint)
    report = archive_pending(sessions, archive, FakeCDN(world.urls))  # type: ignore[arg-type]
    assert (report.stored, report.failed) == (30, 0)
    for sha in world.shas:
        assert hashlib.sha256(archive.get(sha)).hexdigest() == sha
    with sessions() as session:
        assert archive_counts(session) == {"pending": 0, "stored": 30}


def test_a_store_that_is_down_fails_the_round_and_keeps_every_image_queued(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    world = build_world(sessions, tmp_path, archived=False)
    archive = s3_archive("tagdesk-archive", f"http://127.0.0.1:{free_port()}")
    cdn = FakeCDN(world.urls)
    with pytest.raises(ArchiveUnavailable, match="cannot be reached"):
        archive_pending(sessions, archive, cdn)  # type: ignore[arg-type]
    # Not the images' fault: none is marked failed or charged an attempt.
    with sessions() as session:
        assert archive_counts(session)["pending"] == 30
        entries = session.scalars(select(ArchiveEntry)).all()
        assert all(e.state == ArchiveState.PENDING and e.attempts == 0 for e in entries)
