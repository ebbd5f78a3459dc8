"""``python -m tagging dataset build --background [--wait]`` and ``jobs list|show``, with a real
consumer of the training queue in this process."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_session_factory
from tagging.__main__ import main
from tagging.jobs.records import list_jobs, wait_for_job
from tests.tagging.datasets.world import build_world


@pytest.fixture
def cli_env(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[sessionmaker[Session]]:
    """The CLI's environment, the crafted world, and a training worker (a huey consumer)."""
    from tagging.jobs.tasks import task_queue

    for name in [k for k in os.environ if k.startswith("TAGGING_") and "TEST" not in k]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TAGGING_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TAGGING_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("TAGGING_ARCHIVE_DIR", str(tmp_path / "archive"))
    monkeypatch.setenv("TAGGING_QUEUE_NAME", f"cli-jobs-{tmp_path.name}")
    engine = make_engine(sqlite_url)
    sessions = make_session_factory(engine)
    build_world(sessions, tmp_path)
    task_queue.cache_clear()
    training = task_queue().training
    consumer = training.create_consumer(
        workers=1, worker_type="thread", periodic=False, max_delay=0.2
    )
    consumer.start()
    try:
        yield sessions
    finally:
        consumer.stop(graceful=True)
        training.flush()
        task_queue.cache_clear()
        engine.dispose()


BUILD = ["dataset", "build", "--parent", "none", "--seed", "2", "--min-size", "100x100"]


@pytest.mark.slow  # four builds
def test_background_wait_prints_what_a_foreground_build_prints(
    cli_env: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*BUILD, "--background", "--wait", "--json"]) == 0
    captured = capsys.readouterr()
    background = json.loads(captured.out)  # stdout is the version's JSON alone
    assert "queued job 1" in captured.err
    assert background["version"] == 1 and background["state"] == "draft"
    assert background["exclusions"] == {"conflicting near-duplicates": 2}
    assert set(background["by_split"]) == {"train", "test"}

    # The same request in the foreground: the same build (only the version's own facts differ).
    assert main([*BUILD, "--json"]) == 0
    foreground = json.loads(capsys.readouterr().out)
    assert foreground["version"] == 2
    for key in ("by_split", "exclusions", "manifest_sha256", "rows", "recipe", "warnings"):
        assert background[key] == foreground[key], key

    # And as text.
    assert main([*BUILD, "--background", "--wait"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("version 3 · draft · by system")
    assert f"manifest sha256 {foreground['manifest_sha256']}" in text

    assert main(["jobs", "show", "1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["id"], shown["kind"], shown["state"]) == (1, "dataset_build", "done")
    assert shown["requested_by"] == "system" and shown["params"]["seed"] == 2
    assert shown["params"]["min_size"] == [100, 100]
    assert shown["result"]["version"] == 1
    assert shown["result"]["manifest_sha256"] == background["manifest_sha256"]
    assert shown["result"]["by_split"] == background["by_split"]
    assert [p["phase"] for p in shown["result"]["phases"]][-1] == "storing"

    assert main(["jobs", "show", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("job 1 · dataset_build · done · by system")
    assert "manifest_sha256" in text and "finding borders: 30/30" in text

    assert main(["jobs", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["2", "1"]
    assert "dataset_build" in lines[0] and "done" in lines[0] and "version 3" in lines[0]
    assert main(["jobs", "list", "--json", "--kind", "training"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_background_without_wait_prints_the_job_id(
    cli_env: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*BUILD, "--background", "--json"]) == 0
    queued = json.loads(capsys.readouterr().out)
    assert queued == {"job": 1, "kind": "dataset_build", "state": "queued"}
    job = wait_for_job(cli_env, queued["job"], poll=0.05, timeout=60)
    assert job.state == "done" and job.result is not None and job.result["version"] == 1
    assert main([*BUILD, "--background"]) == 0
    assert capsys.readouterr().out.startswith("queued job 2 ")


def test_errors_are_one_line_and_queue_nothing(
    cli_env: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["jobs", "show", "9"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: no job 9" and "Traceback" not in err
    assert main(["dataset", "build", "--parent", "7", "--background", "--wait"]) == 1
    assert capsys.readouterr().err.strip() == "error: no dataset version 7"
    assert main([*BUILD, "--wait"]) == 1
    assert "--background" in capsys.readouterr().err
    assert main([*BUILD, "--background", "--seed", "-3", "--json"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["code"] == "invalid_input" and err.startswith("error: the seed")
    assert main(["jobs", "list", "--limit", "0"]) == 1
    assert "--limit" in capsys.readouterr().err
    assert list_jobs(cli_env) == []
    assert main(["jobs", "list"]) == 0
    assert "no jobs yet" in capsys.readouterr().out


def test_a_job_that_fails_in_the_worker_exits_1_with_its_error(
    cli_env: sessionmaker[Session], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model folder whose files are unreadable passes the request's check (there is a model)
    and fails the build's embedding pass in the worker: one line, exit 1, the job failed."""
    broken = tmp_path / "models" / "type-20261201-0123abcd"
    broken.mkdir(parents=True)
    (broken / "metadata.json").write_text("{not json")
    assert main([*BUILD, "--background", "--wait", "--json"]) == 1
    out, err = capsys.readouterr()
    failed = json.loads(out)
    assert failed["code"] == "job_failed" and failed["job"] == 1
    assert failed["error"].startswith("job 1 failed: ")
    assert err.strip().splitlines()[-1] == f"error: {failed['error']}"
    assert "invalid model metadata" in failed["error"] and "Traceback" not in err
    (job,) = list_jobs(cli_env)
    assert job.state == "failed" and job.error and failed["error"].endswith(job.error)
    assert main(["jobs", "list"]) == 0
    assert job.error in capsys.readouterr().out
