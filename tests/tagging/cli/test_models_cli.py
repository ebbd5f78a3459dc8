"""``python -m tagging models train|list``, headless: a tiny TOML grid on a crafted frozen
version, starting weights from a file made here, JSON out, errors in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tagging.__main__ import main
from tagging.config import Settings
from tagging.ml.architectures import build_architecture
from tests.tagging.ml.test_candidates import (  # noqa: F401  (a fixture)
    frozen_version,
    mlflow_template,
    with_mlflow,
)


@pytest.mark.slow  # a version, two trainings, MLflow: about 15 s
def test_models_train_with_init_weights_then_list(
    tmp_path: Path,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    mlflow_template: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    from db.engine import make_engine, make_session_factory

    for name in [k for k in os.environ if k.startswith("TAGGING_") and "TEST" not in k]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TAGGING_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TAGGING_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("TAGGING_ARCHIVE_DIR", str(tmp_path / "archive"))
    monkeypatch.setenv("TAGGING_ROBUSTNESS_PER_CLASS", "2")  # 6 images: it is measured
    settings = Settings.from_env()
    with_mlflow(settings.data_dir, mlflow_template)
    number = frozen_version(settings, make_session_factory(make_engine(sqlite_url)), tmp_path)

    weights = tmp_path / "resnet18-w4.pt"
    torch.manual_seed(0)
    torch.save(build_architecture("resnet18", 1000, 4).state_dict(), weights)
    grid = tmp_path / "tiny.toml"
    grid.write_text(
        "[defaults]\nepochs = 1\ninput_size = 32\nbatch_size = 8\n\n"
        '[[candidate]]\narchitecture = "resnet18"\nwidth = 4\n\n'
        '[[candidate]]\narchitecture = "small_cnn"\nwidth = 4\n'
    )
    args = ["models", "train", "--dataset", str(number), "--grid", str(grid)]
    assert main([*args, "--init-weights", str(weights), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    resnet, small = result["candidates"]
    assert resnet["name"] == "resnet18-w4-32px-strong-init"
    assert resnet["init_weights"].startswith(f"init weights {weights.name}: ")
    assert "head dropped" in resnet["init_weights"] and small["init_weights"] is None
    assert set(resnet["evaluations"]) == {"test", "named/summit", "robustness"}

    assert main(["models", "list", "--json"]) == 0
    listed = {entry["version"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert {resnet["version"], small["version"]} <= set(listed)
    entry = listed[resnet["version"]]
    assert entry["architecture"] == "resnet18" and entry["dataset_version"] == number
    assert entry["evaluations"]["robustness"]["n"] == 6
    assert not any(e["production"] for e in listed.values())  # nothing promoted

    # Weights that do not fit: one line, exit 1, before anything trains.
    other = tmp_path / "other.pt"
    torch.save(build_architecture("resnet18", 1000, 8).state_dict(), other)
    assert main([*args, "--init-weights", str(other)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: candidate resnet18-w4-32px-strong-init") and "\n" not in err


def test_errors_are_one_line(
    tmp_path: Path,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TAGGING_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TAGGING_DATABASE_URL", sqlite_url)
    assert main(["models", "train", "--dataset", "3"]) == 1
    assert capsys.readouterr().err.strip() == "error: no dataset version 3"
    bad = tmp_path / "bad.toml"
    bad.write_text("[[candidate]]\nepoch = 2\n")
    assert main(["models", "train", "--dataset", "3", "--grid", str(bad)]) == 1
    assert "unknown key 'epoch'" in capsys.readouterr().err
    assert main(["models", "list"]) == 0
    assert "no model" in capsys.readouterr().out
