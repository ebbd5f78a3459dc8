"""Image Type candidates from a frozen dataset version: grids (names, TOML, errors), training with
live curves, evaluation of each candidate and production on the test split, a named
per-advertiser set and the robustness set, artifacts saved unpromoted and tracked in MLflow."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

from tagging.config import Settings
from tagging.curation.split import NamedTestSet
from tagging.errors import InvalidInput, ModelError
from tagging.jobs.dataset_builds import DatasetBuildParams, run_dataset_build
from tagging.ml.candidates import (
    DEFAULT,
    NAMED_PREFIX,
    QUICK,
    REGISTERED_MODEL,
    ROBUSTNESS,
    TEST,
    CandidateConfig,
    EpochPoint,
    Grid,
    GridOptions,
    TrainingListener,
    check_init_weights,
    grid_from_toml,
    load_grid,
    train_grid,
)
from tagging.ml.inference import TypeClassifier
from tagging.ml.model import build_model, production_version, promote, read_metadata, save_artifact
from tagging.ml.robustness import RobustnessConfig
from tagging.ml.tracking import experiment_name, tracker_from_settings
from tests.tagging.datasets.world import DEVELOPER, build_world

TINY = CandidateConfig("small_cnn", 4, 32, lr=0.01, epochs=2, batch_size=8, augment="strong")
"""A candidate that trains in well under a second on the crafted world."""

TINY_OPTIONS = GridOptions(
    robustness=RobustnessConfig(seed=5, n_per_class=3), throughput_seconds=0.05
)


# --- grids ---------------------------------------------------------------------------------------


def test_named_grids_and_their_sizes() -> None:
    assert load_grid("quick").candidates == QUICK and len(QUICK) == 4
    assert load_grid("default").candidates == DEFAULT and 4 <= len(DEFAULT) <= 8
    assert {c.architecture for c in QUICK} == {"small_cnn", "resnet18", "mobilenet_v3_small"}
    # Every name is unique and the grid survives a job's JSON.
    grid = load_grid("quick")
    assert Grid.from_json(grid.to_json()) == grid


def test_a_toml_grid_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        '[defaults]\nepochs = 3\ninput_size = 48\n\n[[candidate]]\narchitecture = "resnet18"\n'
        'width = 8\nlr = 0.002\n\n[[candidate]]\naugment = "none"\nepochs = 5\n'
    )
    grid = load_grid(str(path))
    first, second = grid.candidates
    assert grid.name == "mine.toml"
    assert (first.architecture, first.width, first.epochs, first.input_size, first.lr) == (
        "resnet18",
        8,
        3,
        48,
        0.002,
    )
    assert (second.architecture, second.width, second.epochs, second.augment) == (
        "small_cnn",
        8,  # the architecture's default width
        5,
        "none",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[candidate]]\nepoch = 3\n", r"candidate 1: unknown key 'epoch'"),
        ('[[candidate]]\narchitecture = "vgg"\n', r"candidate 1: architecture must be one of"),
        ('[[candidate]]\n[[candidate]]\nlr = "fast"\n', r"candidate 2: lr must be a number"),
        ("[[candidate]]\nepochs = 0\n", r"epochs must be from 1 to 100"),
        ("[[candidate]]\nwidth = 2.5\n", r"width must be a whole number"),
        ('[[candidate]]\naugment = "heavy"\n', r"augment must be one of"),
        ("[[candidate]]\nbatch_size = true\n", r"batch_size must be a whole number"),
        ("[defaults]\nseeds = 1\n[[candidate]]\n", r"\[defaults\]: unknown key 'seeds'"),
        ("[grid]\n[[candidate]]\n", r"unknown key 'grid'"),
        ("[defaults]\nepochs = 2\n", r"no \[\[candidate\]\]"),
        ("[[candidate]\n", r"not valid TOML"),
        ("[[candidate]]\n" * 9, r"1 to 8 candidates"),
        ("[[candidate]]\n[[candidate]]\n", r"two candidates are named"),
    ],
)
def test_bad_toml_grids_name_the_bad_key(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        grid_from_toml(text, name="g.toml")


def test_a_grid_spec_that_is_neither_a_name_nor_a_toml_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"quick, default or a \.toml"):
        load_grid("fast")
    with pytest.raises(InvalidInput, match="cannot read grid"):
        load_grid(str(tmp_path / "missing.toml"))


def test_init_weights_are_checked_before_anything_runs(tmp_path: Path) -> None:
    from tagging.ml.architectures import build_architecture

    good = tmp_path / "resnet-w4.pt"
    torch.save(build_architecture("resnet18", 1000, 4).state_dict(), good)
    grid = Grid("g", (CandidateConfig("resnet18", 4, 32), TINY)).with_init_weights(str(good))
    # The torchvision candidate starts from the file (the head is for 1000 classes: dropped);
    # the small CNN trains from scratch.
    assert [c.init_weights for c in grid.candidates] == [str(good), None]
    check_init_weights(grid)
    wrong = Grid("g", (CandidateConfig("resnet18", 8, 32),)).with_init_weights(str(good))
    with pytest.raises(ModelError, match=r"candidate resnet18-w8-32px-strong-init: .*do not fit"):
        check_init_weights(wrong)
    missing = Grid("g", (CandidateConfig("resnet18", 4, 32),)).with_init_weights("/nope.pt")
    with pytest.raises(ModelError, match="no such file"):
        check_init_weights(missing)


# --- training on a frozen version ----------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated MLflow SQLite store, made once (seconds) and copied into each data dir."""
    data_dir = tmp_path_factory.mktemp("mlflow-template")
    tracker_from_settings(Settings.from_env({"TAGGING_DATA_DIR": str(data_dir)}))
    return data_dir / "mlflow.sqlite"


def with_mlflow(data_dir: Path, template: Path) -> None:
    """Give ``data_dir`` a fresh copy of the migrated MLflow store."""
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, data_dir / "mlflow.sqlite")


def frozen_version(settings: Settings, sessions: sessionmaker[Session], root: Path) -> int:
    """The crafted world (30 fixed images, two advertisers) as a frozen version with the named
    test set ``summit`` (Summit Auto Group's images); returns its number."""
    build_world(sessions, root)
    outcome = run_dataset_build(
        settings,
        sessions,
        DEVELOPER,
        DatasetBuildParams(
            parent=None,
            seed=3,
            named_test_sets=(NamedTestSet("summit", "Summit Auto Group"),),
            use_model=False,
            freeze=True,
        ),
    )
    return outcome.report.version.number


class Recorder(TrainingListener):
    def __init__(self) -> None:
        self.phases: list[str] = []
        self.epochs: list[tuple[int, EpochPoint]] = []

    def phase(self, name: str) -> None:
        self.phases.append(name)

    def epoch(self, index: int, candidate: CandidateConfig, point: EpochPoint) -> None:
        self.epochs.append((index, point))


@pytest.mark.slow  # builds a version and an MLflow run: about 5 s
def test_a_grid_trains_evaluates_saves_and_tracks_candidates(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, mlflow_template: Path
) -> None:
    from db.engine import make_engine, make_session_factory
    from tagging.jobs.training import load_training_set

    monkeypatch.setenv("TAGGING_ARCHIVE_DIR", str(tmp_path / "archive"))
    settings = Settings.from_env(
        {
            "TAGGING_DATA_DIR": str(tmp_path / "data"),
            "TAGGING_DATABASE_URL": sqlite_url,
            "TAGGING_ARCHIVE_DIR": str(tmp_path / "archive"),
        }
    )
    with_mlflow(settings.data_dir, mlflow_template)
    sessions = make_session_factory(make_engine(sqlite_url))
    number = frozen_version(settings, sessions, tmp_path)
    # A production model to compare with.
    torch.manual_seed(0)
    production = save_artifact(settings.models_dir, build_model(4).eval(), input_size=32, width=4)
    promote(settings.models_dir, production.version)

    data = load_training_set(settings, sessions, number)
    assert data.named_test_sets == (NamedTestSet("summit", "Summit Auto Group"),)
    grid = Grid("tiny", (TINY, replace(TINY, augment="none", seed=2, name="plain")))
    recorder = Recorder()
    tracker = tracker_from_settings(settings)
    result = train_grid(
        data, grid, settings.models_dir, tracker=tracker, listener=recorder, options=TINY_OPTIONS
    )

    # Live curves: one point per epoch per candidate, told as they came.
    assert [(i, p.epoch) for i, p in recorder.epochs] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert "candidate 2/2: plain, epoch 2/2" in recorder.phases
    first = result.candidates[0]
    assert [p.epoch for p in first.curves] == [1, 2]
    assert all(p.train_loss > 0 and 0 <= p.val_accuracy <= 1 for p in first.curves)

    # Evaluated on the test split, the named set and the robustness set, as production is.
    expected_sets = {TEST, NAMED_PREFIX + "summit", ROBUSTNESS}
    test_rows = sum(data.counts()["test"].values())
    for evaluations in (first.evaluations, result.production and result.production["evaluations"]):
        assert evaluations and set(evaluations) == expected_sets
        assert evaluations[TEST]["n"] == test_rows
        assert evaluations[ROBUSTNESS]["n"] == 9
        assert 1 <= evaluations[NAMED_PREFIX + "summit"]["n"] < test_rows
        assert sum(map(sum, evaluations[TEST]["confusion"])) == test_rows
        assert evaluations[TEST]["ece"] is not None
    assert result.production is not None and result.production["version"] == production.version
    assert result.robustness["seed"] == 5 and result.robustness["generator"]
    assert first.images_per_second > 0

    # Saved, never promoted; the metadata records the architecture and the evaluations.
    assert production_version(settings.models_dir) == production.version
    meta = read_metadata(settings.models_dir, first.version)
    assert meta.architecture == "small_cnn" and meta.rebuild_params()["input_size"] == 32
    assert set(meta.metrics["evaluations"]) == expected_sets
    assert TypeClassifier.load(settings.models_dir, first.version).version == first.version

    # One MLflow run per candidate in the version's experiment, the best the challenger.
    assert result.experiment == experiment_name(number)
    runs = {run.name: run for run in tracker.list_runs(result.experiment)}
    assert set(runs) == {TINY.name, "plain"}
    run = runs["plain"]
    assert run.params["architecture"] == "small_cnn" and run.params["epochs"] == "2"
    assert "robustness.accuracy" in run.metrics and "named.summit.accuracy" in run.metrics
    assert [p.step for p in tracker.metric_history(run.run_id, "val_loss")] == [1, 2]
    challenger = tracker.get_alias(REGISTERED_MODEL, "challenger")
    best = next(c for c in result.candidates if c.config.name == result.best)
    assert challenger is not None and challenger.version == best.registered_version
    assert tracker.get_alias(REGISTERED_MODEL, "champion") is None
