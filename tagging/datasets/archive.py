"""The archive of training images: content-addressed bytes (SHA-256 → bytes), kept for good.

A fixed image is worth keeping: the advertiser's CDN may drop or rename it later, and the fix would
then be useless for training. The archive stores the original bytes under their SHA-256, so the
same picture under two URLs is stored once, a stored file can be checked against its name, and a
manifest row's ``path`` (:meth:`ArchiveStore.key`) never moves.

:class:`LocalArchive` (a folder, ``Settings.archive_dir``) is the default; :class:`S3Archive` keeps
the same layout in an S3-compatible bucket (AWS S3, MinIO, Ceph...) when
``TAGGING_ARCHIVE_S3_BUCKET`` is set (:func:`archive_from_settings`). Both return the same
:meth:`ArchiveStore.key` for a hash, so a manifest does not depend on where its bytes are kept.

No database here: the queue of images to archive is ``db.datasets``, the fetching
:mod:`tagging.datasets.service`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from tagging.config import Settings
from tagging.errors import InvalidInput, NotFoundError, TaggingError

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

# An unreachable store must fail a round in seconds, not hang a worker: connecting may take
# CONNECT_TIMEOUT, each read READ_TIMEOUT, and a request is tried at most ATTEMPTS times
# (the first try and 2 retries, with botocore's backoff between them).
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
ATTEMPTS = 3
DEFAULT_REGION = "us-east-1"

# Botocore's failures to reach the store at all (refused, timed out, cut off).
_CONNECTION_ERRORS = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
)
# What HEAD answers for a missing object (a bare status, no body) and the other requests' codes.
_MISSING_CODES = frozenset({"404", "NotFound", "NoSuchKey"})
# What S3 and the S3-compatible stores answer for refused credentials (HEAD answers bare 403).
_AUTH_CODES = frozenset(
    {
        "403",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "AuthorizationHeaderMalformed",
    }
)


class ArchiveUnavailable(TaggingError):
    """The archive's store cannot be used: unreachable, credentials refused, no such bucket.

    It belongs to this module's interface (as ``ColorVendorError`` to the color module's). It is
    deliberately not a ``FetchError``: the image fetch loop counts those against the image and
    moves on, whereas a store that is down fails the whole round and leaves every image queued.
    """

    code = "archive_unavailable"
    http_status = 503


class ArchiveStore(Protocol):
    """Where archived image bytes live, by content SHA-256.

    A remote store's methods may also raise :class:`ArchiveUnavailable` (the store cannot be
    used); callers let it through, so that the whole action fails in one line.
    """

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


class S3Archive:
    """The archive in an S3-compatible bucket: objects ``<prefix>/<sha[:2]>/<sha>``.

    The same layout as :class:`LocalArchive`, under an optional prefix, so :meth:`key` (what a
    manifest records) is the same in both. Objects are written once and never changed: a
    picture already stored is not uploaded again, and every upload names its SHA-256
    (``ChecksumSHA256``), so a store that verifies checksums refuses bytes damaged on the way.

    The endpoint is configured by the operator (``TAGGING_ARCHIVE_S3_URL``), never by an
    advertiser, so it is called with boto3 directly and not through the guarded fetch client
    (whose private-address checks exist for advertisers' URLs; a MinIO on the LAN is normal).

    Args:
        bucket: The bucket (it must exist: the archive never creates one).
        endpoint_url: The S3-compatible endpoint, e.g. ``http://127.0.0.1:9000``; None: AWS S3.
        prefix: The folder inside the bucket, without slashes at either end; "": the root.
        access_key_id: The access key; None (with ``secret_access_key``): boto3's chain.
        secret_access_key: Its secret.
        session_token: A temporary credential's token, if any.
        region: The bucket's region; None: ``us-east-1``.

    Every method raises :class:`ArchiveUnavailable` when the store is unreachable, refuses the
    credentials or has no such bucket: one line naming the endpoint and the bucket, never a
    credential.
    """

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        prefix: str = "",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        region: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.prefix = prefix.strip("/")
        # boto3 is typed as Any at this edge: the project installs no boto3 stubs.
        self._client: Any = _s3_client(
            endpoint_url, region, access_key_id, secret_access_key, session_token
        )
        self._bucket_seen = False

    def __repr__(self) -> str:
        return f"S3Archive(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"

    def key(self, sha256: str) -> str:
        """``ab/abcdef…``: relative to the prefix, as :meth:`LocalArchive.key` to its root."""
        _check(sha256)
        return f"{sha256[:2]}/{sha256}"

    def object_name(self, sha256: str) -> str:
        """The object's full name in the bucket: ``<prefix>/ab/abcdef…``."""
        key = self.key(sha256)
        return f"{self.prefix}/{key}" if self.prefix else key

    def has(self, sha256: str) -> bool:
        """Whether the object exists (its content is checked on :meth:`get`)."""
        name = self.object_name(sha256)
        try:
            self._client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _error_code(exc) not in _MISSING_CODES:
                raise self._unavailable(exc) from None
            # HEAD answers a bare 404 for a missing bucket too: make sure, once, that it is
            # the object that is missing, else every image would look merely unarchived.
            self._check_bucket()
            return False
        except BotoCoreError as exc:
            raise self._unavailable(exc) from None
        self._bucket_seen = True
        return True

    def put(self, data: bytes) -> str:
        """Store ``data`` under its SHA-256; an object already there is left alone."""
        sha = hashlib.sha256(data).hexdigest()
        if self.has(sha):
            return sha
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=self.object_name(sha),
                Body=data,
                ContentType="application/octet-stream",
                ChecksumSHA256=base64.b64encode(bytes.fromhex(sha)).decode("ascii"),
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable(exc) from None
        return sha

    def get(self, sha256: str) -> bytes:
        """The bytes, checked against their name (a corrupt object is an error, never data)."""
        name = self.object_name(sha256)
        try:
            data: bytes = self._client.get_object(Bucket=self.bucket, Key=name)["Body"].read()
        except ClientError as exc:
            if _error_code(exc) != "NoSuchKey":  # a missing bucket is NoSuchBucket on GET
                raise self._unavailable(exc) from None
            raise NotFoundError(f"image {sha256[:12]}… is not in the archive") from None
        except BotoCoreError as exc:
            raise self._unavailable(exc) from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise NotFoundError(f"archived image {sha256[:12]}… is corrupt: its hash differs")
        return data

    def _check_bucket(self) -> None:
        """Raise :class:`ArchiveUnavailable` if the bucket does not exist (checked once)."""
        if self._bucket_seen:
            return
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            missing = _error_code(exc) in _MISSING_CODES
            raise self._unavailable(exc, missing_bucket=missing) from None
        except BotoCoreError as exc:
            raise self._unavailable(exc) from None
        self._bucket_seen = True

    def _unavailable(self, exc: Exception, *, missing_bucket: bool = False) -> ArchiveUnavailable:
        """``exc`` (from botocore) as one line an operator can act on.

        Callers raise it ``from None``: botocore's exception and its chain stay out of the
        traceback; the message keeps the endpoint, the bucket and the store's error code.
        """
        where = f"archive bucket {self.bucket!r} at {self.endpoint_url or 'AWS S3'}"
        code = _error_code(exc)
        if missing_bucket or code == "NoSuchBucket":
            return ArchiveUnavailable(
                f"{where} does not exist: create it, or fix TAGGING_ARCHIVE_S3_BUCKET"
            )
        if code in _AUTH_CODES:
            return ArchiveUnavailable(
                f"{where} refused the credentials ({code}): check AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, and that the key may read and write the bucket"
            )
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return ArchiveUnavailable(
                f"{where}: no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            )
        if isinstance(exc, _CONNECTION_ERRORS):
            return ArchiveUnavailable(
                f"{where} cannot be reached ({type(exc).__name__}): is the store up?"
            )
        return ArchiveUnavailable(f"{where} failed: {code or type(exc).__name__}")


def archive_from_settings(settings: Settings) -> ArchiveStore:
    """The archive the settings name.

    The bucket ``settings.archive_s3_bucket`` when one is configured (an :class:`S3Archive`),
    else the local folder ``settings.archive_dir``. Cheap to call: the same settings give the
    same :class:`S3Archive`.
    """
    if settings.archive_s3_bucket:
        return _s3_archive(
            settings.archive_s3_bucket,
            settings.archive_s3_url,
            settings.archive_s3_prefix,
            settings.aws_access_key_id,
            settings.aws_secret_access_key,
            settings.aws_session_token,
            settings.aws_region,
        )
    return LocalArchive(settings.archive_dir)


@functools.lru_cache(maxsize=8)
def _s3_archive(
    bucket: str,
    endpoint_url: str | None,
    prefix: str,
    access_key_id: str | None,
    secret_access_key: str | None,
    session_token: str | None,
    region: str | None,
) -> S3Archive:
    """One :class:`S3Archive` per bucket and connection settings, shared by the process.

    The pages ask for the archive on every render: making a boto3 client loads the S3 service
    model (tens of milliseconds), and a shared archive checks its bucket once. Clients are
    thread-safe.
    """
    return S3Archive(
        bucket,
        endpoint_url=endpoint_url,
        prefix=prefix,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        session_token=session_token,
        region=region,
    )


def _s3_client(
    endpoint_url: str | None,
    region: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    session_token: str | None,
) -> Any:
    """A boto3 S3 client with bounded timeouts and retries (see :class:`S3Archive`'s args).

    boto3 is imported here (a third of a second), only in processes that use a bucket.
    """
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    config = Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"total_max_attempts": ATTEMPTS, "mode": "standard"},
        # S3-compatible stores are addressed by path (bucket.minio.internal would not resolve);
        # AWS itself keeps boto3's choice.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        # Checksums only where the API requires them (and the SHA-256 put sends): botocore's
        # default CRC32 trailers are refused by several S3-compatible stores.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # The endpoint is TAGGING_ARCHIVE_S3_URL or AWS, never AWS_ENDPOINT_URL* or ~/.aws:
        # the settings are read in one place.
        ignore_configured_endpoint_urls=True,
    )
    # A session of its own: boto3's default session is not thread-safe to make clients from.
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region or DEFAULT_REGION,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
        config=config,
    )


def _error_code(exc: Exception) -> str | None:
    """The store's error code in a botocore ``ClientError`` (``NoSuchKey``, ``403``...)."""
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return str(code) if code else None


def _check(sha256: str) -> None:
    # The hash becomes a path component: refuse anything else.
    if not _SHA256_RE.match(sha256):
        raise InvalidInput(f"not a SHA-256: {sha256!r:.80}")


__all__ = [
    "ArchiveStore",
    "ArchiveUnavailable",
    "LocalArchive",
    "S3Archive",
    "archive_from_settings",
]
