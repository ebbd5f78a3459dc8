"""Image Type network architectures by name, and starting weights from a local file.

Three architectures can be trained as candidates (:data:`ARCHITECTURES`):

* ``small_cnn``: the production :class:`tagging.ml.model.TypeNet` (~25k parameters at width 8);
* ``resnet18``: torchvision's ResNet-18 (11.7M parameters at ImageNet's 1000 classes);
* ``mobilenet_v3_small``: torchvision's MobileNetV3-Small (2.5M at 1000 classes).

torchvision itself cannot be installed beside the pinned torch, so the two torchvision networks
are written here in plain torch, with **exactly torchvision's module names and parameter shapes**:
a torchvision ``state_dict`` (an ImageNet-pretrained file a user already has) loads into them with
:func:`load_init_weights`, and ours would load into torchvision. The references followed are
torchvision's own sources (github.com/pytorch/vision):

* ``torchvision/models/resnet.py`` (``BasicBlock``, ``ResNet``, ``resnet18``: blocks
  ``[2, 2, 2, 2]``) — the layout, names and initialization have not changed since v0.2;
* ``torchvision/models/mobilenetv3.py`` at v0.9 (``InvertedResidualConfig``,
  ``InvertedResidual``, ``MobileNetV3``, ``_mobilenet_v3_conf("mobilenet_v3_small")``), with
  ``_make_divisible`` and ``ConvBNActivation`` from ``mobilenetv2.py``; later versions renamed
  ``ConvBNActivation`` to ``ops.misc.Conv2dNormActivation`` and moved ``SqueezeExcitation`` to
  ``ops.misc`` with the same ``fc1``/``fc2`` names, so the state-dict keys are unchanged.

The parameter counts at 1000 classes match those torchvision publishes with its weights
(``num_params``: 11,689,512 and 2,542,856); the tests check that and the key names.

Nothing is ever downloaded: pretrained weights come only from a file path the user gives.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from db.vocab import IMAGE_TYPES
from tagging.errors import ModelError
from tagging.ml.model import TypeNet

SMALL_CNN = "small_cnn"
RESNET18 = "resnet18"
MOBILENET_V3_SMALL = "mobilenet_v3_small"


# --------------------------------------------------------------------------------------------------
# ResNet-18 (torchvision/models/resnet.py)


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ResNet's two-convolution residual block (torchvision's ``BasicBlock``).

    Args:
        c_in: Input channels.
        c_out: Output channels.
        stride: Stride of the first convolution (2 halves the resolution).
        downsample: Maps the input to the output's shape when they differ (1x1 conv + BN).
    """

    def __init__(
        self, c_in: int, c_out: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        # torchvision keeps the attribute even when it is None: no keys either way.
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision's ``resnet18()``, same module names and shapes (see the module docstring).

    Args:
        num_classes: Outputs of ``fc``.
        width: Channels of the stem and of ``layer1`` (torchvision: 64); ``layer2`` to
            ``layer4`` double it each time.
        dropout: Dropout before ``fc`` (torchvision has none: 0). A parameterless module, so the
            state-dict keys stay torchvision's.
    """

    def __init__(self, num_classes: int = 1000, width: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = [width, width, 2 * width, 4 * width, 8 * width]
        stages = []
        for stage, (c_in, c_out) in enumerate(itertools.pairwise(channels)):
            stride = 1 if stage == 0 else 2
            downsample = None
            if stride != 1 or c_in != c_out:
                downsample = nn.Sequential(
                    nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(c_out),
                )
            stages.append(
                nn.Sequential(BasicBlock(c_in, c_out, stride, downsample), BasicBlock(c_out, c_out))
            )
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(8 * width, num_classes)
        # torchvision's initialization (the Linear keeps PyTorch's default).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a normalized ``(N, 3, H, W)`` batch to ``(N, num_classes)`` logits."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


# --------------------------------------------------------------------------------------------------
# MobileNetV3-Small (torchvision/models/mobilenetv3.py, mobilenetv2.py)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10% down.

    torchvision's ``_make_divisible`` (from TensorFlow's MobileNet): every width multiplier
    gives the same channel counts as torchvision's.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


# torchvision's MobileNetV3 BatchNorm settings.
_MobileNorm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


class ConvNormActivation(nn.Sequential):
    """``Conv2d`` (no bias) → BatchNorm → activation, as torchvision's ``ConvBNActivation``.

    A ``Sequential``, so its keys are ``0.weight`` (conv) and ``1.*`` (norm) like torchvision's.

    Args:
        c_in: Input channels.
        c_out: Output channels.
        kernel_size: Square kernel side; padding keeps the size at stride 1.
        stride: Convolution stride.
        groups: Convolution groups (``c_in`` for a depthwise convolution).
        activation: The activation's class, or ``None`` for none (the projection).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: Callable[..., nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                c_in,
                c_out,
                kernel_size,
                stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            _MobileNorm(c_out),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel attention: global pool → 1x1 conv → ReLU → 1x1 conv → hard sigmoid → scale.

    Args:
        channels: Channels of the input (and of the scale).
        squeeze: Channels of the bottleneck.
    """

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale each channel of ``x`` by a weight in [0, 1] computed from its mean."""
        scale = self.fc2(self.relu(self.fc1(functional.adaptive_avg_pool2d(x, 1))))
        return x * functional.hardsigmoid(scale, inplace=True)


@dataclass(frozen=True)
class InvertedResidualConfig:
    """One MobileNetV3 block: torchvision's ``bneck_conf`` row, channels before the multiplier.

    Attributes:
        c_in: Input channels.
        kernel: Depthwise kernel side.
        expanded: Channels of the expansion.
        c_out: Output channels.
        use_se: Whether the block has a squeeze-and-excitation.
        hard_swish: Hard-swish (``"HS"``) rather than ReLU (``"RE"``).
        stride: Depthwise stride.
    """

    c_in: int
    kernel: int
    expanded: int
    c_out: int
    use_se: bool
    hard_swish: bool
    stride: int


_SMALL_BLOCKS: tuple[InvertedResidualConfig, ...] = tuple(
    InvertedResidualConfig(*row)
    for row in (
        # c_in, kernel, expanded, c_out, SE, HS, stride: torchvision's "mobilenet_v3_small" rows.
        (16, 3, 16, 16, True, False, 2),
        (16, 3, 72, 24, False, False, 2),
        (24, 3, 88, 24, False, False, 1),
        (24, 5, 96, 40, True, True, 2),
        (40, 5, 240, 40, True, True, 1),
        (40, 5, 240, 40, True, True, 1),
        (40, 5, 120, 48, True, True, 1),
        (48, 5, 144, 48, True, True, 1),
        (48, 5, 288, 96, True, True, 2),
        (96, 5, 576, 96, True, True, 1),
        (96, 5, 576, 96, True, True, 1),
    )
)
_SMALL_LAST_CHANNEL = 1024


class InvertedResidual(nn.Module):
    """MobileNetV3's block: [1x1 expand] → depthwise → [SE] → 1x1 project, residual at stride 1.

    Args:
        config: The block's row, channels already multiplied.
    """

    def __init__(self, config: InvertedResidualConfig) -> None:
        super().__init__()
        self.use_res_connect = config.stride == 1 and config.c_in == config.c_out
        activation: type[nn.Module] = nn.Hardswish if config.hard_swish else nn.ReLU
        layers: list[nn.Module] = []
        if config.expanded != config.c_in:
            layers.append(
                ConvNormActivation(config.c_in, config.expanded, 1, activation=activation)
            )
        layers.append(
            ConvNormActivation(
                config.expanded,
                config.expanded,
                config.kernel,
                config.stride,
                groups=config.expanded,
                activation=activation,
            )
        )
        if config.use_se:
            layers.append(SqueezeExcitation(config.expanded, make_divisible(config.expanded // 4)))
        layers.append(ConvNormActivation(config.expanded, config.c_out, 1, activation=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output, plus its input where shapes allow."""
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3Small(nn.Module):
    """torchvision's ``mobilenet_v3_small()``, same module names and shapes.

    Args:
        num_classes: Outputs of the last linear layer (``classifier.3``).
        width: Channels of the first convolution (torchvision: 16); every other channel count is
            scaled by ``width / 16`` as torchvision's width multiplier does.
        dropout: Dropout before the last linear layer (torchvision: 0.2).
    """

    def __init__(self, num_classes: int = 1000, width: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        multiplier = width / 16

        def adjust(channels: int) -> int:
            return make_divisible(channels * multiplier)

        blocks = [
            InvertedResidualConfig(
                adjust(b.c_in),
                b.kernel,
                adjust(b.expanded),
                adjust(b.c_out),
                b.use_se,
                b.hard_swish,
                b.stride,
            )
            for b in _SMALL_BLOCKS
        ]
        first, last_in = blocks[0].c_in, blocks[-1].c_out
        last_out = 6 * last_in
        hidden = adjust(_SMALL_LAST_CHANNEL)
        self.features = nn.Sequential(
            ConvNormActivation(3, first, 3, stride=2, activation=nn.Hardswish),
            *(InvertedResidual(b) for b in blocks),
            ConvNormActivation(last_in, last_out, 1, activation=nn.Hardswish),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_out, hidden),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(hidden, num_classes),
        )
        # torchvision's initialization.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a normalized ``(N, 3, H, W)`` batch to ``(N, num_classes)`` logits."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# --------------------------------------------------------------------------------------------------
# the registry


def _small_cnn(num_classes: int, width: int, dropout: float | None) -> nn.Module:
    model = TypeNet(
        num_classes=num_classes, width=width, dropout=0.1 if dropout is None else dropout
    )
    # As tagging.ml.model.build_model does: oneDNN's convolutions are faster channels-last here.
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs omit memory_format


def _resnet18(num_classes: int, width: int, dropout: float | None) -> nn.Module:
    return ResNet18(num_classes=num_classes, width=width, dropout=dropout or 0.0)


def _mobilenet_v3_small(num_classes: int, width: int, dropout: float | None) -> nn.Module:
    return MobileNetV3Small(
        num_classes=num_classes, width=width, dropout=0.2 if dropout is None else dropout
    )


@dataclass(frozen=True)
class ArchitectureSpec:
    """One trainable architecture.

    Attributes:
        name: Its registry name (``--architecture`` values, metadata).
        default_width: Channels of the first layer when none is given (torchvision's for the
            torchvision networks).
        head: State-dict keys of the final linear layer, whose shape depends on the number of
            classes: :func:`load_init_weights` drops them from a file made for other classes.
        model_type: The class :func:`build_architecture` returns.
        summary: One line for listings.
        build: ``(num_classes, width, dropout or None) → network``.
    """

    name: str
    default_width: int
    head: tuple[str, ...]
    model_type: type[nn.Module]
    summary: str
    build: Callable[[int, int, float | None], nn.Module]


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.name: spec
    for spec in (
        ArchitectureSpec(
            SMALL_CNN,
            8,
            ("classifier.weight", "classifier.bias"),
            TypeNet,
            "the production TypeNet: 4 conv blocks, ~25k parameters at width 8",
            _small_cnn,
        ),
        ArchitectureSpec(
            RESNET18,
            64,
            ("fc.weight", "fc.bias"),
            ResNet18,
            "torchvision's ResNet-18 layout, 11M parameters at width 64",
            _resnet18,
        ),
        ArchitectureSpec(
            MOBILENET_V3_SMALL,
            16,
            ("classifier.3.weight", "classifier.3.bias"),
            MobileNetV3Small,
            "torchvision's MobileNetV3-Small layout, 1.5M parameters at width 16",
            _mobilenet_v3_small,
        ),
    )
}
"""Every architecture :func:`build_architecture` knows, by name."""


def build_architecture(
    name: str,
    num_classes: int = len(IMAGE_TYPES),
    width: int | None = None,
    *,
    dropout: float | None = None,
) -> nn.Module:
    """Build an untrained network (initialized from torch's global RNG).

    Args:
        name: A key of :data:`ARCHITECTURES`.
        num_classes: Outputs of the network.
        width: Channels of the first layer; ``None`` for the architecture's default
            (:attr:`ArchitectureSpec.default_width`). The torchvision networks scale every layer
            with it, so only the default gives torchvision's exact shapes.
        dropout: Dropout before the last linear layer; ``None`` for the architecture's default
            (TypeNet 0.1, ResNet-18 0, MobileNetV3-Small 0.2).

    Returns:
        The network in training mode, taking normalized ``(N, 3, H, W)`` input of any size from
        32 pixels up and answering ``(N, num_classes)`` logits.

    Raises:
        ValueError: Unknown name, or a width, class count or dropout out of range.
    """
    spec = ARCHITECTURES.get(name)
    if spec is None:
        raise ValueError(f"unknown architecture {name!r}; expected one of {sorted(ARCHITECTURES)}")
    width = spec.default_width if width is None else width
    if width < 1 or num_classes < 1:
        raise ValueError("width and num_classes must be at least 1")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return spec.build(num_classes, width, dropout)


def architecture_of(model: nn.Module) -> ArchitectureSpec:
    """The registry entry of a network built by :func:`build_architecture`.

    Raises:
        ValueError: ``model`` is not one of the registered classes.
    """
    for spec in ARCHITECTURES.values():
        if type(model) is spec.model_type:
            return spec
    raise ValueError(f"{type(model).__name__} is not a registered architecture")


# --------------------------------------------------------------------------------------------------
# starting weights from a local file


@dataclass(frozen=True)
class InitWeightsReport:
    """What :func:`load_init_weights` did.

    Attributes:
        path: The file read.
        loaded: Keys of the model now holding the file's values.
        missing: Keys of the model the file gave no value for, left as initialized: the head
            when it was dropped or absent, and BatchNorm's ``num_batches_tracked`` counters that
            old checkpoints (torchvision's ResNet files among them) do not store.
        unexpected: Keys of the file that were not loaded: the head, when its shape is not ours.
        head_dropped: Whether the file's classifier head was dropped for another class count.
    """

    path: Path
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    head_dropped: bool

    def summary(self) -> str:
        """One line for logs and the command line."""
        head = "head dropped (other classes), " if self.head_dropped else ""
        return (
            f"init weights {self.path.name}: {len(self.loaded)} tensors loaded, {head}"
            f"{len(self.missing)} kept as initialized, {len(self.unexpected)} ignored"
        )


_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
"""Training checkpoints often nest the state dict under one of these keys."""


def load_init_weights(model: nn.Module, path: Path) -> InitWeightsReport:
    """Start ``model`` from the weights in a local state-dict file (e.g. ImageNet-pretrained).

    The file is read with ``torch.load(weights_only=True)``, so it can hold tensors but never
    code. A checkpoint that nests the state dict under ``state_dict``/``model`` and the
    ``module.`` prefix of ``DataParallel`` are accepted. Every backbone tensor must be present
    with our shape: a partly matching file would silently train from half-random weights. The
    classifier head (:attr:`ArchitectureSpec.head`, or the last linear layer of an unregistered
    model) is loaded when its shape is ours and otherwise dropped, keeping our initialization.
    Nothing is downloaded.

    Args:
        model: The network to fill, in place.
        path: The state-dict file.

    Returns:
        Which keys were loaded, kept, and ignored.

    Raises:
        ModelError: No such file, a file that is not a state dict, or backbone keys or shapes
            that do not match the model's (one line, naming a few offending keys).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"init weights {path}: no such file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a non-torch or unsafe file
        raise ModelError(
            f"init weights {path} is not a torch state dict: {_first_line(exc)}"
        ) from exc
    state = _as_state_dict(raw, path)

    ours = model.state_dict()
    head = _head_keys(model)
    head_dropped = any(k in state and state[k].shape != ours[k].shape for k in head if k in ours)
    accepted = {k: v for k, v in state.items() if not (head_dropped and k in head)}

    unexpected = sorted(k for k in accepted if k not in ours)
    wrong_shape = [k for k in accepted if k in ours and accepted[k].shape != ours[k].shape]
    missing_backbone = [
        k
        for k in ours
        if k not in accepted and k not in head and not k.endswith("num_batches_tracked")
    ]
    if unexpected or wrong_shape or missing_backbone:
        problems = []
        if missing_backbone:
            problems.append(f"{len(missing_backbone)} missing ({_examples(missing_backbone)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected ({_examples(unexpected)})")
        if wrong_shape:
            key = wrong_shape[0]
            problems.append(
                f"{len(wrong_shape)} of another shape ({key}: file {tuple(accepted[key].shape)}, "
                f"model {tuple(ours[key].shape)})"
            )
        raise ModelError(
            f"init weights {path} do not fit {type(model).__name__}: {'; '.join(problems)}"
        )

    merged = dict(ours)
    merged.update(accepted)
    try:
        model.load_state_dict(merged)
    except Exception as exc:  # defensive: the checks above should leave nothing to refuse
        raise ModelError(f"init weights {path}: cannot load: {_first_line(exc)}") from exc
    return InitWeightsReport(
        path=path,
        loaded=tuple(k for k in ours if k in accepted),
        missing=tuple(k for k in ours if k not in accepted),
        unexpected=tuple(sorted(k for k in state if k not in accepted)),
        head_dropped=head_dropped,
    )


def _as_state_dict(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    """The ``{name: tensor}`` mapping inside what ``torch.load`` returned, or a ModelError."""
    if isinstance(raw, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(raw.get(key), Mapping):
                raw = raw[key]
                break
    if not isinstance(raw, Mapping) or not raw:
        kind = "an empty mapping" if isinstance(raw, Mapping) else f"a {type(raw).__name__}"
        raise ModelError(f"init weights {path} is not a state dict: it holds {kind}")
    bad = [k for k, v in raw.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(
            f"init weights {path} is not a state dict: {len(bad)} entries are not named tensors "
            f"({_examples([str(k) for k in bad])})"
        )
    state = {str(k): v for k, v in raw.items()}
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _head_keys(model: nn.Module) -> tuple[str, ...]:
    """The classifier head's keys: the registry's, else the last linear layer's."""
    try:
        return architecture_of(model).head
    except ValueError:
        pass
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        return ()
    return tuple(f"{last}.{p}" for p, _ in model.get_submodule(last).named_parameters())


def _examples(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (", …" if len(keys) > limit else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
