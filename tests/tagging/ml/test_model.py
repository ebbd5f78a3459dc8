"""The Image Type network and its artifacts: saving, verified loading, versions and promotion."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from db.vocab import IMAGE_TYPES
from tagging.errors import ModelError
from tagging.ml.model import (
    ARCHITECTURE,
    METADATA_FILE,
    PRODUCTION_FILE,
    WEIGHTS_FILE,
    TypeNet,
    build_model,
    list_versions,
    load_artifact,
    production_version,
    promote,
    read_metadata,
    save_artifact,
)

WIDTH = 4
INPUT = 32
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _model(seed: int) -> TypeNet:
    torch.manual_seed(seed)
    return build_model(WIDTH).eval()


def _save(models_dir: Path, seed: int, when: datetime = T0) -> str:
    meta = save_artifact(
        models_dir,
        _model(seed),
        input_size=INPUT,
        width=WIDTH,
        train_config={"seed": seed},
        training_data={"generator": "test"},
        metrics={"val_accuracy": 0.5},
        now=when,
    )
    return meta.version


def test_network_shapes() -> None:
    model = _model(0)
    assert model(torch.randn(5, 3, INPUT, INPUT)).shape == (5, len(IMAGE_TYPES))
    # The default network stays small: it has to answer 64 images in a few ms per image on CPU.
    assert sum(p.numel() for p in build_model(8).parameters()) < 50_000


def test_fused_inference_copy_matches_the_network() -> None:
    model = _model(0)
    # Non-trivial BatchNorm statistics, as after training.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, INPUT, INPUT) * 2 + 0.5)
    model.eval()
    fused = model.fused_for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # original intact
    x = torch.randn(8, 3, INPUT, INPUT)
    with torch.inference_mode():
        assert torch.allclose(fused(x), model(x), atol=1e-4)


def test_round_trip(tmp_path: Path) -> None:
    model = _model(1)
    meta = save_artifact(
        tmp_path, model, input_size=INPUT, width=WIDTH, metrics={"val_accuracy": 0.9}, now=T0
    )
    folder = tmp_path / meta.version
    blob = (folder / WEIGHTS_FILE).read_bytes()
    assert re.fullmatch(r"type-20261129-[0-9a-f]{8}", meta.version)
    assert meta.version.endswith(hashlib.sha256(blob).hexdigest()[:8])
    assert meta.weights_sha256 == hashlib.sha256(blob).hexdigest()
    assert meta.classes == IMAGE_TYPES and meta.architecture == ARCHITECTURE
    assert meta.torch_version == torch.__version__

    # weights.pt is a plain state_dict: loadable without unpickling arbitrary code.
    state = torch.load(folder / WEIGHTS_FILE, weights_only=True)
    assert set(state) == set(model.state_dict())
    stored = json.loads((folder / METADATA_FILE).read_text())
    assert stored["metrics"] == {"val_accuracy": 0.9}

    artifact = load_artifact(tmp_path, meta.version)
    assert artifact.metadata == meta and artifact.path == folder
    assert not artifact.model.training
    x = torch.randn(3, 3, INPUT, INPUT)
    with torch.inference_mode():
        assert torch.equal(artifact.model(x), model(x))


def test_saving_the_same_weights_twice_is_one_version(tmp_path: Path) -> None:
    assert _save(tmp_path, 1) == _save(tmp_path, 1)
    assert len(list_versions(tmp_path)) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_corrupt_weights_fail_the_sha256_check(tmp_path: Path) -> None:
    version = _save(tmp_path, 1)
    weights = tmp_path / version / WEIGHTS_FILE
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ModelError, match=r"SHA-256.*corrupt or was replaced"):
        load_artifact(tmp_path, version)


def test_replaced_weights_fail_the_sha256_check(tmp_path: Path) -> None:
    version = _save(tmp_path, 1)
    other = _save(tmp_path, 2)
    (tmp_path / version / WEIGHTS_FILE).write_bytes((tmp_path / other / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ModelError, match="SHA-256"):
        load_artifact(tmp_path, version)


def test_wrong_classes_are_refused(tmp_path: Path) -> None:
    version = _save(tmp_path, 1)
    path = tmp_path / version / METADATA_FILE
    data = json.loads(path.read_text())
    data["classes"] = ["Stock", "Dealer", "Placeholder"]
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="predicts classes"):
        load_artifact(tmp_path, version)
    # The same artifact loads for a caller that really expects that order.
    assert load_artifact(tmp_path, version, expected_classes=("Stock", "Dealer", "Placeholder"))


def test_unknown_architecture_is_refused(tmp_path: Path) -> None:
    version = _save(tmp_path, 1)
    path = tmp_path / version / METADATA_FILE
    data = json.loads(path.read_text())
    data["architecture"] = "TypeNet-v0"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="architecture"):
        load_artifact(tmp_path, version)


def test_weights_that_do_not_fit_the_network_are_refused(tmp_path: Path) -> None:
    version = _save(tmp_path, 1)
    path = tmp_path / version / METADATA_FILE
    data = json.loads(path.read_text())
    data["width"] = WIDTH * 2  # the stored weights are for another width
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="cannot load"):
        load_artifact(tmp_path, version)


def test_missing_things_raise_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no Image Type model"):
        load_artifact(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="not found"):
        load_artifact(tmp_path, "type-20260101-deadbeef")
    with pytest.raises(ModelError, match="not a model version"):
        load_artifact(tmp_path, "../../etc")

    version = _save(tmp_path, 1)
    (tmp_path / version / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelError, match=WEIGHTS_FILE):
        load_artifact(tmp_path, version)

    other = _save(tmp_path, 2)
    (tmp_path / other / METADATA_FILE).unlink()
    with pytest.raises(ModelError, match=METADATA_FILE):
        load_artifact(tmp_path, other)


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", '{"version": "x"}', '{"version": 3, "classes": []}'],
)
def test_invalid_metadata_is_refused(tmp_path: Path, text: str) -> None:
    version = _save(tmp_path, 1)
    (tmp_path / version / METADATA_FILE).write_text(text)
    with pytest.raises(ModelError, match=r"metadata|says version"):
        load_artifact(tmp_path, version)


def test_metadata_must_name_its_own_folder(tmp_path: Path) -> None:
    version = _save(tmp_path, 1)
    renamed = tmp_path / "type-20200101-00000000"
    (tmp_path / version).rename(renamed)
    with pytest.raises(ModelError, match="says version"):
        read_metadata(tmp_path, renamed.name)


def test_versions_are_listed_oldest_first(tmp_path: Path) -> None:
    assert list_versions(tmp_path) == []
    newest = _save(tmp_path, 1, T0 + timedelta(hours=2))
    oldest = _save(tmp_path, 2, T0)
    middle = _save(tmp_path, 3, T0 + timedelta(hours=1))
    (tmp_path / "notes").mkdir()  # not a version
    assert list_versions(tmp_path) == [oldest, middle, newest]


def test_production_pointer_and_promotion(tmp_path: Path) -> None:
    first = _save(tmp_path, 1, T0)
    second = _save(tmp_path, 2, T0 + timedelta(minutes=5))
    # Without PRODUCTION the newest version is loaded.
    assert production_version(tmp_path) is None
    assert load_artifact(tmp_path).metadata.version == second

    promote(tmp_path, first)
    assert (tmp_path / PRODUCTION_FILE).read_text().strip() == first
    assert production_version(tmp_path) == first
    assert load_artifact(tmp_path).metadata.version == first
    # An explicit version still wins over PRODUCTION.
    assert load_artifact(tmp_path, second).metadata.version == second

    promote(tmp_path, second)
    assert load_artifact(tmp_path).metadata.version == second


def test_promotion_refuses_missing_or_broken_versions(tmp_path: Path) -> None:
    good = _save(tmp_path, 1)
    promote(tmp_path, good)
    with pytest.raises(ModelError):
        promote(tmp_path, "type-20260101-deadbeef")
    bad = _save(tmp_path, 2)
    (tmp_path / bad / WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(ModelError, match="SHA-256"):
        promote(tmp_path, bad)
    assert production_version(tmp_path) == good  # untouched by the failed promotions


def test_production_naming_a_missing_version_is_an_error(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    (tmp_path / PRODUCTION_FILE).write_text("type-20260101-deadbeef\n")
    with pytest.raises(ModelError, match="not found"):
        load_artifact(tmp_path)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_an_artifact_of_another_architecture_loads_and_classifies(
    tmp_path: Path, name: str
) -> None:
    from PIL import Image

    from tagging.ml.architectures import build_architecture
    from tagging.ml.inference import TypeClassifier

    torch.manual_seed(0)
    model = build_architecture(name, len(IMAGE_TYPES), 8).eval()
    meta = save_artifact(tmp_path, model, input_size=INPUT, width=8, architecture=name, now=T0)
    assert meta.architecture == name == meta.architecture_name
    assert meta.rebuild_params() == {"width": 8, "input_size": INPUT}
    classifier = TypeClassifier.load(tmp_path, meta.version)
    images = [Image.new("RGB", (120, 90), color) for color in ("red", "white", "gray")]
    predictions = classifier.predict(images)
    assert [p.label in IMAGE_TYPES for p in predictions] == [True] * 3
    # The served network answers what the saved one does.
    from tagging.ml.transforms import preprocess

    with torch.inference_mode():
        expected = torch.softmax(model(preprocess(images, INPUT)), dim=1).argmax(dim=1).tolist()
    assert [IMAGE_TYPES.index(p.label) for p in predictions] == expected
    # Without the registry, only the small CNN can be built: said, not guessed.
    with pytest.raises(ModelError, match=f"architecture {name!r}"):
        load_artifact(tmp_path, meta.version)


def test_typenet_v1_artifacts_read_as_the_small_cnn(tmp_path: Path) -> None:
    version = _save(tmp_path, 1)
    path = tmp_path / version / METADATA_FILE
    data = json.loads(path.read_text())
    del data["architecture_params"]  # written before the field existed
    path.write_text(json.dumps(data))
    meta = read_metadata(tmp_path, version)
    assert meta.architecture == ARCHITECTURE and meta.architecture_name == "small_cnn"
    assert meta.rebuild_params() == {"width": WIDTH, "input_size": INPUT}
    from tagging.ml.inference import TypeClassifier

    assert TypeClassifier.load(tmp_path, version).version == version
