"""The candidate architectures: shapes, torchvision's state-dict layout, and starting weights."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from db.vocab import IMAGE_TYPES
from tagging.errors import ModelError
from tagging.ml.architectures import (
    ARCHITECTURES,
    MobileNetV3Small,
    ResNet18,
    architecture_of,
    build_architecture,
    load_init_weights,
)
from tagging.ml.model import TypeNet

# torchvision's resnet18() parameters, in state-dict order, with their shapes at 1000 classes:
# written from torchvision/models/resnet.py (BasicBlock, ResNet._make_layer, blocks [2, 2, 2, 2]),
# not from our implementation. Every BatchNorm's buffers follow its bias (see _with_buffers).
TORCHVISION_RESNET18_PARAMETERS = """
conv1.weight 64,3,7,7
bn1.weight 64
bn1.bias 64
layer1.0.conv1.weight 64,64,3,3
layer1.0.bn1.weight 64
layer1.0.bn1.bias 64
layer1.0.conv2.weight 64,64,3,3
layer1.0.bn2.weight 64
layer1.0.bn2.bias 64
layer1.1.conv1.weight 64,64,3,3
layer1.1.bn1.weight 64
layer1.1.bn1.bias 64
layer1.1.conv2.weight 64,64,3,3
layer1.1.bn2.weight 64
layer1.1.bn2.bias 64
layer2.0.conv1.weight 128,64,3,3
layer2.0.bn1.weight 128
layer2.0.bn1.bias 128
layer2.0.conv2.weight 128,128,3,3
layer2.0.bn2.weight 128
layer2.0.bn2.bias 128
layer2.0.downsample.0.weight 128,64,1,1
layer2.0.downsample.1.weight 128
layer2.0.downsample.1.bias 128
layer2.1.conv1.weight 128,128,3,3
layer2.1.bn1.weight 128
layer2.1.bn1.bias 128
layer2.1.conv2.weight 128,128,3,3
layer2.1.bn2.weight 128
layer2.1.bn2.bias 128
layer3.0.conv1.weight 256,128,3,3
layer3.0.bn1.weight 256
layer3.0.bn1.bias 256
layer3.0.conv2.weight 256,256,3,3
layer3.0.bn2.weight 256
layer3.0.bn2.bias 256
layer3.0.downsample.0.weight 256,128,1,1
layer3.0.downsample.1.weight 256
layer3.0.downsample.1.bias 256
layer3.1.conv1.weight 256,256,3,3
layer3.1.bn1.weight 256
layer3.1.bn1.bias 256
layer3.1.conv2.weight 256,256,3,3
layer3.1.bn2.weight 256
layer3.1.bn2.bias 256
layer4.0.conv1.weight 512,256,3,3
layer4.0.bn1.weight 512
layer4.0.bn1.bias 512
layer4.0.conv2.weight 512,512,3,3
layer4.0.bn2.weight 512
layer4.0.bn2.bias 512
layer4.0.downsample.0.weight 512,256,1,1
layer4.0.downsample.1.weight 512
layer4.0.downsample.1.bias 512
layer4.1.conv1.weight 512,512,3,3
layer4.1.bn1.weight 512
layer4.1.bn1.bias 512
layer4.1.conv2.weight 512,512,3,3
layer4.1.bn2.weight 512
layer4.1.bn2.bias 512
fc.weight 1000,512
fc.bias 1000
"""

# Sampled keys of torchvision's mobilenet_v3_small() at 1000 classes, from mobilenetv3.py's
# "mobilenet_v3_small" rows (bneck_conf(input, kernel, expanded, out, SE, activation, stride)).
TORCHVISION_MOBILENET_V3_SMALL_SAMPLE = {
    "features.0.0.weight": (16, 3, 3, 3),  # the stem: 3x3 stride 2, 16 channels
    "features.0.1.running_var": (16,),
    "features.1.block.0.0.weight": (16, 1, 3, 3),  # row 1: no expansion (16 → 16), depthwise
    "features.1.block.1.fc1.weight": (8, 16, 1, 1),  # SE squeeze: _make_divisible(16 // 4, 8)
    "features.1.block.1.fc2.bias": (16,),
    "features.1.block.2.0.weight": (16, 16, 1, 1),  # projection
    "features.2.block.0.0.weight": (72, 16, 1, 1),  # row 2: expansion 16 → 72, no SE
    "features.2.block.2.0.weight": (24, 72, 1, 1),
    "features.4.block.1.0.weight": (96, 1, 5, 5),  # row 4: 5x5 depthwise
    "features.4.block.2.fc1.weight": (24, 96, 1, 1),
    "features.9.block.0.0.weight": (288, 48, 1, 1),
    "features.11.block.3.0.weight": (96, 576, 1, 1),
    "features.12.0.weight": (576, 96, 1, 1),  # last conv: 6 × 96
    "classifier.0.weight": (1024, 576),
    "classifier.3.weight": (1000, 1024),
    "classifier.3.bias": (1000,),
}
# 34 conv + BN pairs (the stem, 2 + 3 + 3 + 8 × 3 in the 11 blocks, the last conv) of 6 keys
# each, 9 squeeze-excitations of 4, the classifier's 2 linear layers of 2.
TORCHVISION_MOBILENET_V3_SMALL_KEYS = 34 * 6 + 9 * 4 + 4

# The parameter counts torchvision publishes with its ImageNet weights ("num_params").
TORCHVISION_NUM_PARAMS = {"resnet18": 11_689_512, "mobilenet_v3_small": 2_542_856}


def _with_buffers(parameters: list[tuple[str, tuple[int, ...]]]) -> list[str]:
    """Parameter names → state-dict keys: a BatchNorm's running stats follow its bias."""
    keys = []
    for name, shape in parameters:
        keys.append(name)
        module = name.rsplit(".", 1)[0]
        is_norm = ".bn" in f".{module}" or module.endswith("downsample.1")
        if name.endswith(".bias") and is_norm and len(shape) == 1:
            keys += [f"{module}.running_mean", f"{module}.running_var"]
            keys.append(f"{module}.num_batches_tracked")
    return keys


def _parse(table: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in table.strip().splitlines():
        name, shape = line.split()
        rows.append((name, tuple(int(d) for d in shape.split(","))))
    return rows


def _randomize(model: nn.Module, seed: int) -> None:
    """Give every float tensor of the state dict new values, so a load is visible."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a busy 2-core machine, two make tiny forward passes 20x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --- building -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("size", [64, 96])
def test_forward_gives_one_logit_per_class(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_architecture(name).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, len(IMAGE_TYPES))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_parameter_learns(name: str) -> None:
    # One training step at a small width: every parameter gets a gradient (no dead branch).
    torch.manual_seed(0)
    model = build_architecture(name, width=8).train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_registry() -> None:
    assert set(ARCHITECTURES) == {"small_cnn", "resnet18", "mobilenet_v3_small"}
    small = build_architecture("small_cnn")
    assert type(small) is TypeNet  # the production network itself, not a copy
    assert small.classifier.in_features == 8 * ARCHITECTURES["small_cnn"].default_width
    assert isinstance(build_architecture("resnet18"), ResNet18)
    assert isinstance(build_architecture("mobilenet_v3_small"), MobileNetV3Small)
    for name, spec in ARCHITECTURES.items():
        model = build_architecture(name, num_classes=5)
        assert architecture_of(model) is spec
        assert [model.state_dict()[k].shape[0] for k in spec.head] == [5, 5]
    narrow = build_architecture("resnet18", width=16)
    assert narrow.conv1.out_channels == 16 and narrow.fc.in_features == 128
    assert build_architecture("mobilenet_v3_small", dropout=0.5).classifier[2].p == 0.5
    with pytest.raises(ValueError, match="unknown architecture"):
        build_architecture("vgg16")
    with pytest.raises(ValueError, match="dropout"):
        build_architecture("resnet18", dropout=1.5)
    with pytest.raises(ValueError):
        architecture_of(nn.Linear(2, 2))


def test_resnet18_has_torchvision_state_dict() -> None:
    expected_parameters = _parse(TORCHVISION_RESNET18_PARAMETERS)
    expected_keys = _with_buffers(expected_parameters)
    state = build_architecture("resnet18", num_classes=1000).state_dict()
    assert len(expected_parameters) == 62 and len(expected_keys) == 122
    assert list(state) == expected_keys  # names and order
    assert {k: tuple(state[k].shape) for k, _ in expected_parameters} == dict(expected_parameters)
    parameters = build_architecture("resnet18", num_classes=1000).parameters()
    assert sum(p.numel() for p in parameters) == TORCHVISION_NUM_PARAMS["resnet18"]


def test_mobilenet_v3_small_has_torchvision_state_dict() -> None:
    model = build_architecture("mobilenet_v3_small", num_classes=1000)
    state = model.state_dict()
    assert len(state) == TORCHVISION_MOBILENET_V3_SMALL_KEYS
    for key, shape in TORCHVISION_MOBILENET_V3_SMALL_SAMPLE.items():
        assert tuple(state[key].shape) == shape, key
    assert (
        sum(p.numel() for p in model.parameters()) == TORCHVISION_NUM_PARAMS["mobilenet_v3_small"]
    )
    # torchvision's BatchNorm settings for MobileNetV3.
    norm = model.features[0][1]
    assert isinstance(norm, nn.BatchNorm2d) and (norm.eps, norm.momentum) == (0.001, 0.01)


# --- starting weights -----------------------------------------------------------------------------


def test_imagenet_like_file_loads_backbone_and_drops_its_head(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_architecture("resnet18", num_classes=1000, width=8)
    _randomize(source, seed=2)
    # Like torchvision's own ResNet files, which predate BatchNorm's num_batches_tracked.
    saved = {k: v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(saved, path)

    model = build_architecture("resnet18", width=8)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("fc.")}
    report = load_init_weights(model, path)

    state = model.state_dict()
    for key, value in saved.items():
        if key.startswith("fc."):
            continue
        assert torch.equal(state[key], value), key
    for key, value in head_before.items():  # ours kept, not the 1000-class one
        assert torch.equal(state[key], value)
    assert report.head_dropped
    assert set(report.unexpected) == {"fc.weight", "fc.bias"}
    assert {"fc.weight", "fc.bias", "bn1.num_batches_tracked"} <= set(report.missing)
    assert len(report.loaded) == len(saved) - 2
    assert "head dropped" in report.summary()


def test_file_with_our_head_loads_completely(tmp_path: Path) -> None:
    source = build_architecture("small_cnn")
    _randomize(source, seed=3)
    path = tmp_path / "small.pt"
    torch.save(source.state_dict(), path)
    model = build_architecture("small_cnn")
    report = load_init_weights(model, path)
    assert not report.head_dropped and report.missing == () and report.unexpected == ()
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
    # The loaded network computes what the source computes.
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(model.eval()(x), source.eval()(x))


def test_mobilenet_keeps_its_hidden_layer_and_drops_only_the_last(tmp_path: Path) -> None:
    source = build_architecture("mobilenet_v3_small", num_classes=1000, width=8)
    _randomize(source, seed=4)
    path = tmp_path / "mobilenet.pth"
    torch.save(source.state_dict(), path)
    model = build_architecture("mobilenet_v3_small", width=8)
    report = load_init_weights(model, path)
    assert set(report.unexpected) == {"classifier.3.weight", "classifier.3.bias"}
    assert torch.equal(model.classifier[0].weight, source.classifier[0].weight)
    assert model.classifier[3].weight.shape == (3, model.classifier[3].in_features)


def test_checkpoint_wrappers_are_unwrapped(tmp_path: Path) -> None:
    source = build_architecture("small_cnn", width=4)
    _randomize(source, seed=5)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "state_dict": state}, path)
    model = build_architecture("small_cnn", width=4)
    load_init_weights(model, path)
    assert torch.equal(model.classifier.weight, source.classifier.weight)


class _NotAllowed:
    """Pickled by the test: weights_only loading must refuse to rebuild it."""

    value = 1


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    files: dict[str, tuple[Path, str]] = {}
    files["missing"] = (tmp_path / "nope.pth", "no such file")
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    files["text"] = (text, "not a torch state dict")
    listing = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listing)
    files["list"] = (listing, "not a state dict")
    numbers = tmp_path / "numbers.pt"
    torch.save({"conv1.weight": 3}, numbers)
    files["non-tensor"] = (numbers, "not a state dict")
    code = tmp_path / "code.pt"
    code.write_bytes(pickle.dumps({"x": _NotAllowed()}))
    files["pickled object"] = (code, "not a torch state dict")
    other = tmp_path / "small_cnn.pt"
    torch.save(build_architecture("small_cnn").state_dict(), other)
    files["other architecture"] = (other, "missing")
    wider = tmp_path / "wider.pt"
    torch.save(build_architecture("resnet18", width=16).state_dict(), wider)
    files["other shapes"] = (wider, "another shape")
    partial = tmp_path / "partial.pt"
    state = build_architecture("resnet18", width=8).state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4.")}, partial)
    files["missing layer"] = (partial, "missing")
    return files


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bad_files_raise_one_line_model_errors(tmp_path: Path) -> None:
    model = build_architecture("resnet18", width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for case, (path, message) in _bad_files(tmp_path).items():
        with pytest.raises(ModelError) as caught:
            load_init_weights(model, path)
        text = str(caught.value)
        assert message in text, case
        assert "\n" not in text and str(path) in text, case
    # A refused file changes nothing: no half-loaded network.
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
