"""Settings: read from the environment, written back for a subprocess, validated."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tagging.config import DEFAULT_SESSION_IDLE_MINUTES, Settings
from tagging.errors import ConfigError


def test_defaults(tmp_path: Path) -> None:
    settings = Settings.from_env({"TAGGING_DATA_DIR": str(tmp_path)})
    assert settings.redis_url is None
    assert settings.session_idle_minutes == DEFAULT_SESSION_IDLE_MINUTES == 480
    assert settings.ml_token is None
    assert settings.allowed_hosts == ()


def test_redis_url_and_idle_minutes_are_read(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "TAGGING_DATA_DIR": str(tmp_path),
            "TAGGING_REDIS_URL": "redis://queue.internal:6379/2",
            "TAGGING_SESSION_IDLE_MINUTES": " 15 ",
        }
    )
    assert settings.redis_url == "redis://queue.internal:6379/2"
    assert settings.session_idle_minutes == 15
    # Empty means unset, as for every other variable.
    empty = Settings.from_env(
        {
            "TAGGING_DATA_DIR": str(tmp_path),
            "TAGGING_REDIS_URL": "",
            "TAGGING_SESSION_IDLE_MINUTES": "",
        }
    )
    assert (empty.redis_url, empty.session_idle_minutes) == (None, DEFAULT_SESSION_IDLE_MINUTES)


@pytest.mark.parametrize("value", ["0", "-5", "ten", "1.5", "8h"])
def test_bad_idle_minutes_are_a_config_error(tmp_path: Path, value: str) -> None:
    env = {"TAGGING_DATA_DIR": str(tmp_path), "TAGGING_SESSION_IDLE_MINUTES": value}
    with pytest.raises(ConfigError, match="TAGGING_SESSION_IDLE_MINUTES"):
        Settings.from_env(env)


def test_to_env_round_trips_every_setting(tmp_path: Path) -> None:
    full = Settings.from_env(
        {
            "TAGGING_DATA_DIR": str(tmp_path / "data"),
            "TAGGING_DATABASE_URL": "postgresql+psycopg://tagdesk@db.internal/tagdesk",
            "TAGGING_ML_URL": "https://ml.internal:8443/",
            "TAGGING_ML_TOKEN": "s3cret",
            "TAGGING_ML_CACHE_URL": "postgresql+psycopg://ml@db.internal/cache",
            "TAGGING_ALLOWED_HOSTS": "cdn.internal, 10.0.0.5:8765",
            "TAGGING_COLOR_VENDOR_URL": "https://vendor.example/colors",
            "TAGGING_REDIS_URL": "redis://queue.internal:6379/0",
            "TAGGING_SESSION_IDLE_MINUTES": "30",
        }
    )
    assert Settings.from_env(full.to_env()) == full
    assert full.to_env()["TAGGING_ALLOWED_HOSTS"] == "cdn.internal,10.0.0.5:8765"

    minimal = Settings.from_env({"TAGGING_DATA_DIR": str(tmp_path)})
    env = minimal.to_env()
    assert Settings.from_env(env) == minimal
    assert all(name.startswith("TAGGING_") for name in env)
    assert not {"TAGGING_ML_TOKEN", "TAGGING_COLOR_VENDOR_URL", "TAGGING_REDIS_URL"} & set(env)


def test_to_env_carries_fields_set_in_code(tmp_path: Path) -> None:
    """What a launcher changes with ``replace`` reaches the subprocess."""
    base = Settings.from_env({"TAGGING_DATA_DIR": str(tmp_path)})
    launched = replace(
        base,
        ml_url="http://127.0.0.1:8800",
        ml_token="token",
        allowed_hosts=("127.0.0.1:8765",),
        session_idle_minutes=5,
    )
    assert Settings.from_env(launched.to_env()) == launched
    assert launched.to_env()["TAGGING_SESSION_IDLE_MINUTES"] == "5"


def test_the_task_queue_uses_redis_when_configured(tmp_path: Path) -> None:
    from huey import RedisHuey, SqliteHuey

    from tagging.jobs.tasks import make_huey

    settings = Settings.from_env({"TAGGING_DATA_DIR": str(tmp_path)})
    assert isinstance(make_huey(settings), SqliteHuey)
    # Redis connects lazily: building the queue needs no server.
    queue = make_huey(replace(settings, redis_url="redis://127.0.0.1:1/3"))
    assert isinstance(queue, RedisHuey)
    assert queue.storage.conn.connection_pool.connection_kwargs["db"] == 3


def test_ml_replicas_and_workers(tmp_path: Path) -> None:
    import os

    base = {"TAGGING_DATA_DIR": str(tmp_path)}
    default = Settings.from_env(base)
    assert default.ml_urls == () and default.ml_replicas == ("http://127.0.0.1:8800",)
    assert default.ml_workers == len(os.sched_getaffinity(0)) >= 1

    one = Settings.from_env({**base, "TAGGING_ML_URL": "http://lb.internal:8800/"})
    assert one.ml_replicas == ("http://lb.internal:8800",)
    assert one.ml_host_entries() == ["lb.internal:8800"]

    several = Settings.from_env(
        {
            **base,
            "TAGGING_ML_URLS": " http://ml-1:8800/, http://ml-2:8800 ,,http://ml-1:8800",
            "TAGGING_ML_WORKERS": "3",
        }
    )
    assert several.ml_urls == several.ml_replicas == ("http://ml-1:8800", "http://ml-2:8800")
    assert several.ml_url == "http://ml-1:8800"  # the first, for whatever wants one
    assert several.ml_host_entries() == ["ml-1:8800", "ml-2:8800"]
    assert several.ml_workers == 3
    assert Settings.from_env(several.to_env()) == several
    assert several.to_env()["TAGGING_ML_URLS"] == "http://ml-1:8800,http://ml-2:8800"
    # TAGGING_ML_URL may name one of them; another is a contradiction.
    same = Settings.from_env({**base, "TAGGING_ML_URL": "http://ml-2:8800", **_urls()})
    assert same.ml_replicas == several.ml_replicas
    with pytest.raises(ConfigError, match=r"TAGGING_ML_URL .* is not one of TAGGING_ML_URLS"):
        Settings.from_env({**base, "TAGGING_ML_URL": "http://other:1", **_urls()})
    launched = replace(several, ml_workers=5)
    assert Settings.from_env(launched.to_env()) == launched


def _urls() -> dict[str, str]:
    return {"TAGGING_ML_URLS": "http://ml-1:8800,http://ml-2:8800"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TAGGING_ML_WORKERS", "0"),
        ("TAGGING_ML_WORKERS", "two"),
        ("TAGGING_ML_URLS", "http://ml-1:8800,ftp://ml-2"),
        ("TAGGING_ML_URLS", "ml-1:8800"),
        ("TAGGING_ML_URL", "http://"),
    ],
)
def test_bad_ml_settings_are_a_config_error(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({"TAGGING_DATA_DIR": str(tmp_path), name: value})


def _s3(**extra: str) -> dict[str, str]:
    return {
        "TAGGING_ARCHIVE_S3_BUCKET": "tagdesk-archive",
        "TAGGING_ARCHIVE_S3_URL": "http://127.0.0.1:9000/",
        "TAGGING_ARCHIVE_S3_PREFIX": "/training/images/",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "s3cret-key",
        **extra,
    }


def test_the_archive_bucket_is_read_and_round_trips(tmp_path: Path) -> None:
    base = {"TAGGING_DATA_DIR": str(tmp_path)}
    settings = Settings.from_env({**base, **_s3(AWS_DEFAULT_REGION="eu-west-1")})
    assert settings.archive_s3_bucket == "tagdesk-archive"
    assert settings.archive_s3_url == "http://127.0.0.1:9000"
    assert settings.archive_s3_prefix == "training/images"
    assert (settings.aws_access_key_id, settings.aws_secret_access_key) == (
        "AKIAEXAMPLE",
        "s3cret-key",
    )
    assert settings.aws_region == "eu-west-1"
    assert Settings.from_env(settings.to_env()) == settings
    assert "s3cret-key" not in repr(settings)  # a logged Settings shows no secret
    # No bucket: the folder, and other tools' AWS variables are not this app's settings.
    default = Settings.from_env({**base, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"})
    assert default.archive_s3_bucket is None and default.aws_access_key_id is None
    assert not any(name.startswith(("AWS_", "TAGGING_ARCHIVE_S3")) for name in default.to_env())
    # AWS S3 itself: a bucket alone, no endpoint, credentials from boto3's chain.
    aws = Settings.from_env({**base, "TAGGING_ARCHIVE_S3_BUCKET": "tagdesk-archive"})
    assert (aws.archive_s3_url, aws.archive_s3_prefix, aws.aws_access_key_id) == (None, "", None)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"TAGGING_ARCHIVE_S3_BUCKET": ""}, "TAGGING_ARCHIVE_S3_BUCKET is not"),
        ({"TAGGING_ARCHIVE_S3_BUCKET": "a/b"}, "must be a bucket name"),
        ({"TAGGING_ARCHIVE_S3_URL": "minio:9000"}, "TAGGING_ARCHIVE_S3_URL must be an http"),
        ({"AWS_SECRET_ACCESS_KEY": ""}, "AWS_SECRET_ACCESS_KEY is not set"),
        ({"AWS_ACCESS_KEY_ID": ""}, "AWS_ACCESS_KEY_ID is not set"),
    ],
)
def test_bad_archive_bucket_settings_are_a_config_error(
    tmp_path: Path, changes: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"TAGGING_DATA_DIR": str(tmp_path), **_s3(**changes)})


def test_credentials_in_the_archive_endpoint_are_refused_without_echoing_them(
    tmp_path: Path,
) -> None:
    env = {"TAGGING_DATA_DIR": str(tmp_path), **_s3()}
    env["TAGGING_ARCHIVE_S3_URL"] = "http://minio:hunter2@127.0.0.1:9000"
    with pytest.raises(ConfigError, match="must not carry credentials") as error:
        Settings.from_env(env)
    assert "hunter2" not in str(error.value)


def test_the_mlflow_store_defaults_to_sqlite_in_the_data_dir_and_round_trips(
    tmp_path: Path,
) -> None:
    default = Settings.from_env({"TAGGING_DATA_DIR": str(tmp_path), "MLFLOW_TRACKING_URI": " "})
    assert default.mlflow_tracking_uri is None
    assert default.mlflow_uri == f"sqlite:///{tmp_path / 'mlflow.sqlite'}"
    assert default.mlflow_artifacts_dir == tmp_path / "mlruns"
    assert "MLFLOW_TRACKING_URI" not in default.to_env()

    for uri in (
        "http://mlflow.internal:5000",
        "https://mlflow.example/team",
        "sqlite:////srv/mlflow/mlflow.db",
        "postgresql+psycopg://mlflow:pw@db.internal/mlflow",
    ):
        named = Settings.from_env({"TAGGING_DATA_DIR": str(tmp_path), "MLFLOW_TRACKING_URI": uri})
        assert named.mlflow_uri == named.mlflow_tracking_uri == uri
        assert named.to_env()["MLFLOW_TRACKING_URI"] == uri
        assert Settings.from_env(named.to_env()) == named


@pytest.mark.parametrize(
    "uri", ["mlflow.internal:5000", "./mlruns", "file:///srv/mlruns", "ftp://host/x", "http://"]
)
def test_an_unusable_mlflow_uri_is_a_config_error(tmp_path: Path, uri: str) -> None:
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI must be"):
        Settings.from_env({"TAGGING_DATA_DIR": str(tmp_path), "MLFLOW_TRACKING_URI": uri})


def test_a_bad_mlflow_uri_is_reported_without_its_password(tmp_path: Path) -> None:
    env = {"TAGGING_DATA_DIR": str(tmp_path), "MLFLOW_TRACKING_URI": "pg://u:hunter2@db/mlflow"}
    with pytest.raises(ConfigError, match=r"\*\*\*@db/mlflow") as error:
        Settings.from_env(env)
    assert "hunter2" not in str(error.value)
