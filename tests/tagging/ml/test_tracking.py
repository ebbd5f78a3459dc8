"""Experiment tracking in MLflow: runs, step metrics and artifacts read back from the store, the
registry's aliases, the store the settings choose, failures as one-line errors, and MLflow's own
UI showing the same runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tagging.config import Settings
from tagging.errors import InvalidInput, NotFoundError
from tagging.ml.tracking import (
    ExperimentTracker,
    MlflowTracker,
    TrackingUnavailable,
    experiment_name,
    mlflow_env,
    tracked_run,
    tracker_from_settings,
)
from tests.utils.servers import closed_port

ROOT = Path(__file__).resolve().parents[3]
MLFLOW = Path(sys.executable).with_name("mlflow")


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new MLflow SQLite store, created and migrated once (it takes seconds) and copied for
    each test."""
    data_dir = tmp_path_factory.mktemp("mlflow-template")
    tracker_from_settings(Settings.from_env({"TAGGING_DATA_DIR": str(data_dir)}))
    return data_dir / "mlflow.sqlite"


@pytest.fixture
def settings(tmp_path: Path, mlflow_template: Path) -> Settings:
    """Settings on a data dir that holds a fresh copy of the migrated store."""
    shutil.copy(mlflow_template, tmp_path / "mlflow.sqlite")
    return Settings.from_env({"TAGGING_DATA_DIR": str(tmp_path)})


@pytest.fixture
def tracker(settings: Settings) -> ExperimentTracker:
    return tracker_from_settings(settings)


def finished_run(
    tracker: ExperimentTracker, tmp_path: Path, experiment: str, name: str, weights: bytes
) -> str:
    """A finished run with a model file (``model/model.pt``) and one accuracy value."""
    model = tmp_path / name / "model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(weights)
    with tracked_run(tracker, experiment, name=name) as run_id:
        tracker.log_metrics(run_id, {"accuracy": len(weights) / 100}, step=0)
        tracker.log_artifact(run_id, model, "model")
    return run_id


def test_a_run_is_read_back_from_the_sqlite_store_in_the_data_dir(
    settings: Settings, tracker: ExperimentTracker, tmp_path: Path
) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"\x00weights\xff" * 100)
    report = {"accuracy": 0.93, "confusion": [[5, 1], [0, 6]], "set": "test"}
    with tracked_run(tracker, experiment_name(3), name="cnn-w32", tags={"arch": "cnn"}) as run_id:
        tracker.log_params(run_id, {"lr": 0.01, "epochs": 3, "augment": True, "init": None})
        for epoch, (loss, accuracy) in enumerate([(1.2, 0.5), (0.7, 0.8), (0.4, 0.9)]):
            tracker.log_metrics(run_id, {"loss": loss, "accuracy": accuracy}, step=epoch)
        tracker.set_tags(run_id, {"grid": "quick"})
        tracker.log_artifact(run_id, model, "model")
        tracker.log_json(run_id, "reports/test.json", report)

    # A new tracker (a new client) reads what the store kept, not what the first one remembers.
    reader = tracker_from_settings(settings)
    run = reader.get_run(run_id)
    assert (run.experiment, run.name, run.status) == ("dataset-3", "cnn-w32", "FINISHED")
    assert run.params == {"lr": "0.01", "epochs": "3", "augment": "true", "init": ""}
    assert run.metrics == {"loss": 0.4, "accuracy": 0.9}  # the latest value of each
    assert run.tags == {"arch": "cnn", "grid": "quick"}
    assert run.ended_at is not None and run.ended_at >= run.started_at
    loss = reader.metric_history(run_id, "loss")
    assert [(p.step, p.value) for p in loss] == [(0, 1.2), (1, 0.7), (2, 0.4)]

    got = reader.download_artifacts(run_id, "model/model.pt", tmp_path / "download")
    assert got.read_bytes() == model.read_bytes()
    got = reader.download_artifacts(run_id, "reports/test.json", tmp_path / "download")
    assert json.loads(got.read_text()) == report

    # The store is the data dir's: the run in its SQLite file, the artifacts in its mlruns.
    assert settings.mlflow_uri == f"sqlite:///{tmp_path / 'mlflow.sqlite'}"
    with sqlite3.connect(tmp_path / "mlflow.sqlite") as db:
        rows = db.execute("SELECT name, status FROM runs WHERE run_uuid = ?", (run_id,)).fetchall()
    assert rows == [("cnn-w32", "FINISHED")]
    stored = tmp_path / "mlruns" / "dataset-3" / run_id / "artifacts" / "model" / "model.pt"
    assert stored.read_bytes() == model.read_bytes()


def test_a_run_that_raises_ends_failed_or_killed(tracker: ExperimentTracker) -> None:
    with pytest.raises(ValueError, match="diverged"), tracked_run(tracker, "dataset-1") as failed:
        tracker.log_metrics(failed, {"loss": float("nan")}, step=0)
        raise ValueError("loss diverged")
    with pytest.raises(KeyboardInterrupt), tracked_run(tracker, "dataset-1") as killed:
        raise KeyboardInterrupt
    assert tracker.get_run(failed).status == "FAILED"
    assert tracker.get_run(killed).status == "KILLED"
    assert tracker.get_run(failed).ended_at is not None


def test_the_champion_moves_between_versions_and_the_challenger_is_separate(
    tracker: ExperimentTracker, tmp_path: Path
) -> None:
    first = finished_run(tracker, tmp_path, "dataset-3", "first", b"a" * 90)
    second = finished_run(tracker, tmp_path, "dataset-3", "second", b"b" * 95)
    assert tracker.register(first, "model/model.pt", "image-type") == 1
    assert tracker.register(second, "model", "image-type") == 2
    assert tracker.get_alias("image-type", "champion") is None

    tracker.set_alias("image-type", 1, "champion")
    champion = tracker.get_alias("image-type", "champion")
    assert champion is not None
    assert (champion.version, champion.run_id) == (1, first)
    assert champion.source == f"runs:/{first}/model/model.pt"

    tracker.set_alias("image-type", 2, "champion")
    tracker.set_alias("image-type", 1, "challenger")
    champion = tracker.get_alias("image-type", "champion")
    challenger = tracker.get_alias("image-type", "challenger")
    assert champion is not None and (champion.version, champion.run_id) == (2, second)
    assert challenger is not None and (challenger.version, challenger.run_id) == (1, first)
    versions = tracker.model_versions("image-type")
    assert [(v.version, v.aliases) for v in versions] == [(2, ("champion",)), (1, ("challenger",))]

    tracker.delete_alias("image-type", "challenger")
    tracker.delete_alias("image-type", "challenger")  # not set any more: nothing to do
    assert tracker.get_alias("image-type", "challenger") is None
    assert [(v.version, v.aliases) for v in tracker.model_versions("image-type")] == [
        (2, ("champion",)),
        (1, ()),
    ]


def test_the_registry_refuses_what_does_not_exist(
    tracker: ExperimentTracker, tmp_path: Path
) -> None:
    run_id = finished_run(tracker, tmp_path, "dataset-2", "only", b"c" * 50)
    with pytest.raises(NotFoundError, match=r"no artifact model/weights\.pt"):
        tracker.register(run_id, "model/weights.pt", "image-type")
    with pytest.raises(NotFoundError):
        tracker.register("0" * 32, "model", "image-type")
    tracker.register(run_id, "model", "image-type")
    with pytest.raises(NotFoundError, match="version 7"):
        tracker.set_alias("image-type", 7, "champion")
    with pytest.raises(InvalidInput, match="champion and challenger"):
        tracker.set_alias("image-type", 1, "production")  # type: ignore[arg-type]
    assert tracker.get_alias("color", "champion") is None
    assert tracker.model_versions("color") == []


def test_runs_are_listed_newest_first_with_their_metrics(
    tracker: ExperimentTracker, tmp_path: Path
) -> None:
    names = ["a", "b", "c"]
    for index, name in enumerate(names):
        finished_run(tracker, tmp_path, "dataset-5", name, b"x" * (10 * (index + 1)))
        time.sleep(0.01)  # start times are kept in milliseconds
    finished_run(tracker, tmp_path, "dataset-6", "elsewhere", b"y")

    runs = tracker.list_runs("dataset-5")
    assert [run.name for run in runs] == ["c", "b", "a"]
    assert [run.metrics for run in runs] == [
        {"accuracy": 0.3},
        {"accuracy": 0.2},
        {"accuracy": 0.1},
    ]
    assert {run.experiment for run in runs} == {"dataset-5"}
    assert tracker.list_runs("dataset-99") == []


def test_unusable_names_paths_and_values_are_invalid_input(
    tracker: ExperimentTracker, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput, match="experiment name"):
        tracker.start_run("../etc")
    run_id = tracker.start_run("dataset-4")
    (tmp_path / "f.bin").write_bytes(b"1")
    with pytest.raises(InvalidInput, match="artifact path"):
        tracker.log_artifact(run_id, tmp_path / "f.bin", "../outside")
    with pytest.raises(NotFoundError):
        tracker.log_artifact(run_id, tmp_path / "missing.bin", "model")
    with pytest.raises(InvalidInput, match=r"\.json"):
        tracker.log_json(run_id, "report.txt", {})
    with pytest.raises(InvalidInput, match="step"):
        tracker.log_metrics(run_id, {"loss": 1.0}, step=-1)
    tracker.log_params(run_id, {"lr": 0.01})
    with pytest.raises(InvalidInput, match="param"):  # MLflow keeps a parameter for good
        tracker.log_params(run_id, {"lr": 0.02})
    with pytest.raises(NotFoundError):
        tracker.get_run("f" * 32)


def test_the_settings_choose_the_store(tmp_path: Path) -> None:
    default = Settings.from_env({"TAGGING_DATA_DIR": str(tmp_path)})
    assert default.mlflow_uri == f"sqlite:///{tmp_path / 'mlflow.sqlite'}"
    assert default.mlflow_artifacts_dir == tmp_path / "mlruns"

    port = closed_port()
    remote = Settings.from_env(
        {"TAGGING_DATA_DIR": str(tmp_path), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    )
    tracker = tracker_from_settings(remote)
    # A server is not contacted until it is used, and nothing is created in the data dir.
    assert tracker.location == f"http://127.0.0.1:{port}"
    assert not (tmp_path / "mlflow.sqlite").exists()


def test_an_unreachable_server_fails_fast_in_one_line_without_the_password(
    tmp_path: Path,
) -> None:
    port = closed_port()
    settings = Settings.from_env(
        {
            "TAGGING_DATA_DIR": str(tmp_path),
            "MLFLOW_TRACKING_URI": f"http://trainer:s3cret@127.0.0.1:{port}",
        }
    )
    tracker = tracker_from_settings(settings)
    assert tracker.location == f"http://***@127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable) as caught:
        tracker.start_run("dataset-1")
    assert time.monotonic() - started < 10  # MLflow's own default retries for minutes
    message = str(caught.value)
    assert f"127.0.0.1:{port} is unreachable" in message
    assert "\n" not in message and "s3cret" not in message


def test_an_unreachable_database_fails_fast_in_one_line(tmp_path: Path) -> None:
    port = closed_port()
    uri = f"postgresql+psycopg://trainer:s3cret@127.0.0.1:{port}/mlflow"
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable) as caught:
        MlflowTracker(uri, artifacts_dir=tmp_path / "mlruns")
    # MLflow alone retries a refused database for about 100 s.
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "Connection refused" in message
    assert "\n" not in message and "s3cret" not in message


def _offline_env() -> dict[str, str]:
    """This environment without what already turns MLflow's telemetry off (CI, pytest), so that
    a child process shows what Tagdesk itself does."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MLFLOW_")
        and name not in ("DO_NOT_TRACK", "CI", "PYTEST_CURRENT_TEST", "GITHUB_ACTIONS")
    }
    env["MLFLOW_DISABLE_TELEMETRY"] = "false"  # an operator's setting does not turn it on
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.mark.slow
def test_mlflow_is_quiet_and_sends_no_telemetry(tmp_path: Path) -> None:
    """A fresh process: importing MLflow, creating and migrating a store, a run, a registered
    version print nothing, and MLflow has no telemetry client."""
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from tagging.config import Settings
        from tagging.ml.tracking import tracked_run, tracker_from_settings

        data = Path({str(tmp_path)!r})
        tracker = tracker_from_settings(Settings.from_env({{"TAGGING_DATA_DIR": str(data)}}))
        (data / "m.pt").write_bytes(b"w")
        with tracked_run(tracker, "dataset-1", name="quiet") as run_id:
            tracker.log_params(run_id, {{"lr": 0.1}})
            tracker.log_metrics(run_id, {{"loss": 0.5}}, step=0)
            tracker.log_artifact(run_id, data / "m.pt", "model")
        tracker.set_alias("image-type", tracker.register(run_id, "model", "image-type"),
                          "champion")

        from mlflow.telemetry import get_telemetry_client
        print("telemetry", get_telemetry_client())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=_offline_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout == "telemetry None\n"


@pytest.fixture
def mlflow_ui(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """``mlflow ui`` (MLflow's UI and REST API) on a free loopback port, on the data dir's
    store: the command the README gives."""
    port = closed_port()
    log_path = tmp_path / "mlflow-ui.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                str(MLFLOW),
                "ui",
                "--backend-store-uri",
                settings.mlflow_uri,
                "--default-artifact-root",
                str(settings.mlflow_artifacts_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=tmp_path,
            env=mlflow_env(_offline_env()),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its uvicorn child is stopped with it
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # a loaded 2-core machine is slow to start it
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow ui exited: {log_path.read_text()[-2000:]}")
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow ui did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


@pytest.mark.slow
def test_mlflow_s_own_ui_shows_the_same_runs(
    settings: Settings, tracker: ExperimentTracker, tmp_path: Path, mlflow_ui: str
) -> None:
    run_id = finished_run(tracker, tmp_path, "dataset-3", "candidate", b"z" * 80)
    tracker.log_params(run_id, {"arch": "resnet18"})
    tracker.set_alias("image-type", tracker.register(run_id, "model", "image-type"), "champion")

    # MLflow's REST API (what its UI calls) reads the run Tagdesk logged.
    got = requests.get(
        f"{mlflow_ui}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=10
    )
    assert got.status_code == 200, got.text
    run = got.json()["run"]
    assert run["info"]["run_name"] == "candidate"
    assert run["info"]["status"] == "FINISHED"
    assert {p["key"]: p["value"] for p in run["data"]["params"]} == {"arch": "resnet18"}
    assert {m["key"]: m["value"] for m in run["data"]["metrics"]} == {"accuracy": 0.8}
    alias = requests.get(
        f"{mlflow_ui}/api/2.0/mlflow/registered-models/alias",
        params={"name": "image-type", "alias": "champion"},
        timeout=10,
    )
    assert alias.json()["model_version"]["version"] == "1"
    page = requests.get(mlflow_ui, timeout=10)  # the UI itself is served
    assert page.status_code == 200 and "<html" in page.text.lower()
    artifact = requests.get(  # and the model file, as its artifact view fetches it
        f"{mlflow_ui}/get-artifact",
        params={"path": "model/model.pt", "run_uuid": run_id},
        timeout=10,
    )
    assert artifact.status_code == 200 and artifact.content == b"z" * 80

    # Tagdesk on MLFLOW_TRACKING_URI (the server) sees the same, and what it logs there lands in
    # the same store.
    remote = tracker_from_settings(
        Settings.from_env(
            {"TAGGING_DATA_DIR": str(tmp_path / "elsewhere"), "MLFLOW_TRACKING_URI": mlflow_ui}
        )
    )
    [listed] = remote.list_runs("dataset-3")
    assert (listed.run_id, listed.metrics) == (run_id, {"accuracy": 0.8})
    champion = remote.get_alias("image-type", "champion")
    assert champion is not None and champion.run_id == run_id
    with tracked_run(remote, "dataset-3", name="via-server") as via_server:
        remote.log_metrics(via_server, {"loss": 0.25}, step=4)
    assert tracker.get_run(via_server).metrics == {"loss": 0.25}
    assert [(p.step, p.value) for p in tracker.metric_history(via_server, "loss")] == [(4, 0.25)]
