"""The Image Type network and its on-disk artifacts.

An artifact is a folder ``<models_dir>/<version>/`` holding:

- ``weights.pt``: the ``state_dict`` only, so loading never unpickles code
  (``torch.load(weights_only=True)``);
- ``metadata.json``: a :class:`ModelMetadata` — how to rebuild the network, what it was trained
  on, how well it did, and the SHA-256 of ``weights.pt``.

An artifact may hold any network of :mod:`tagging.ml.architectures`: its metadata names the
architecture (``small_cnn``, ``resnet18``, ``mobilenet_v3_small``; the production TypeNet's
artifacts from before the architectures were named say ``TypeNet-v1``, read as ``small_cnn``) and
the parameters that rebuild it (``architecture_params``: ``width``, ``input_size``).
:func:`load_artifact` builds the network with the builder it is given
(:func:`tagging.ml.architectures.build_architecture`, which
:meth:`tagging.ml.inference.TypeClassifier.load` passes), or, without one, the TypeNet this
module defines. It cannot import that registry itself: the registry builds its small CNN from
:class:`TypeNet` here, and no two files may import each other.

``<models_dir>/PRODUCTION`` is a one-line text file naming the version the ML server loads by
default. A version is ``type-YYYYMMDD-<first 8 hex digits of the weights' SHA-256>``, so two
identical trainings share a version and a version can never silently name different weights.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from db.vocab import IMAGE_TYPES
from tagging.errors import ModelError

ARCHITECTURE = "TypeNet-v1"
"""Name of the network layout in :class:`TypeNet` in the artifacts :mod:`tagging.ml.train` saves;
bump it when the layout changes. Loading reads it as :data:`SMALL_CNN`."""

SMALL_CNN = "small_cnn"
"""The registry name of :class:`TypeNet` (:data:`tagging.ml.architectures.SMALL_CNN`)."""

LEGACY_ARCHITECTURES: dict[str, str] = {ARCHITECTURE: SMALL_CNN}
"""Architecture names of older artifacts → the registry name that rebuilds them."""

ArchitectureBuilder = Callable[[str, int, int], nn.Module]
"""``(registry name, number of classes, width) → untrained network``: what :func:`load_artifact`
builds an artifact's network with (:func:`tagging.ml.architectures.build_architecture`)."""

M = TypeVar("M", bound=nn.Module)

WEIGHTS_FILE = "weights.pt"
METADATA_FILE = "metadata.json"
PRODUCTION_FILE = "PRODUCTION"

_VERSION_RE = re.compile(r"^type-\d{8}-[0-9a-f]{8}$")


class TypeNet(nn.Module):
    """A small CNN: four conv blocks, global average pooling, one linear layer.

    Each block is ``conv3x3 → BatchNorm → ReLU → maxpool 2``, doubling the channels from
    ``width`` to ``8 × width``. The three classes differ in large-scale layout (outdoor lot, plain
    studio, text card), so ~25k parameters at a 64-pixel input are plenty, and a batch of 64 stays
    far below the ML server's latency budget on two CPU cores.

    The network runs in channels-last memory format: oneDNN's CPU convolutions are about twice
    as fast with it at these small channel counts.

    Args:
        num_classes: Number of outputs (``len(IMAGE_TYPES)``).
        width: Channels of the first block.
        dropout: Dropout before the classifier, against memorizing the synthetic renders.
    """

    def __init__(self, num_classes: int = len(IMAGE_TYPES), width: int = 8, dropout: float = 0.1):
        super().__init__()
        channels = [3, width, 2 * width, 4 * width, 8 * width]
        blocks: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(channels):
            blocks += [
                # No conv bias: the BatchNorm right after has its own shift.
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a normalized ``(N, 3, H, W)`` batch to ``(N, num_classes)`` logits."""
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))

    def fused_for_inference(self) -> TypeNet:
        """An eval-mode copy with every BatchNorm folded into the convolution before it.

        In eval mode a BatchNorm is a fixed per-channel affine map, so it can live in the conv's
        weights and bias; skipping one full pass over each activation map halves the CPU time
        of a 64-image batch. The copy must not be trained: its statistics are baked in.
        """
        fused = copy.deepcopy(self).eval()
        layers: list[nn.Module] = []
        for layer in fused.features:
            if isinstance(layer, nn.BatchNorm2d) and layers and isinstance(layers[-1], nn.Conv2d):
                layers[-1] = fuse_conv_bn_eval(layers[-1], layer)
            else:
                layers.append(layer)
        fused.features = nn.Sequential(*layers)
        return fused.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs omit memory_format


@dataclass(frozen=True)
class ModelMetadata:
    """Everything known about one trained artifact, stored as ``metadata.json``.

    Attributes:
        version: ``type-YYYYMMDD-<sha8>``; also the artifact's folder name.
        classes: Output labels in logit order; must equal :data:`tagging.IMAGE_TYPES` to load.
        input_size: Square input side in pixels expected by the network.
        width: The network's width (channels of its first layer), needed to rebuild it before
            loading weights.
        architecture: Network layout name: a :mod:`tagging.ml.architectures` registry name, or
            :data:`ARCHITECTURE` (read as :data:`SMALL_CNN`) for the synthetic trainer's models.
        created_at: ISO 8601 UTC time of saving.
        train_config: The training configuration, as a plain dict.
        training_data: Generator, seeds and per-class counts of the training data.
        metrics: Held-out accuracy, per-class recall, confusion matrix, timings.
        weights_sha256: SHA-256 of ``weights.pt``; checked on every load.
        torch_version: ``torch.__version__`` at training time.
        architecture_params: What rebuilds the network besides its name: ``width`` and
            ``input_size`` always, ``dropout`` when it was set (an artifact from before this field
            has none; :meth:`rebuild_params` then reads ``width`` and ``input_size``).
    """

    version: str
    classes: tuple[str, ...]
    input_size: int
    width: int
    architecture: str
    created_at: str
    weights_sha256: str
    torch_version: str
    train_config: dict[str, Any] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    architecture_params: dict[str, Any] = field(default_factory=dict)

    @property
    def architecture_name(self) -> str:
        """The registry name that rebuilds the network (``TypeNet-v1`` reads as ``small_cnn``)."""
        return LEGACY_ARCHITECTURES.get(self.architecture, self.architecture)

    def rebuild_params(self) -> dict[str, Any]:
        """The architecture's parameters: ``width`` and ``input_size`` at least."""
        return {"width": self.width, "input_size": self.input_size, **self.architecture_params}

    def to_json(self) -> str:
        """Serialize as indented JSON."""
        data = asdict(self)
        data["classes"] = list(self.classes)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        """Parse ``metadata.json``.

        Raises:
            ModelError: Not JSON, or a required field is missing or of the wrong type.
        """
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("the top level is not an object")
            # Unknown keys are ignored so that newer metadata still loads in older code.
            known = set(cls.__dataclass_fields__)
            meta = cls(**{k: v for k, v in data.items() if k in known})
            if not isinstance(meta.classes, list | tuple):
                raise TypeError("classes must be a list")
            meta = dataclasses.replace(meta, classes=tuple(meta.classes))
            if not isinstance(meta.input_size, int) or not isinstance(meta.width, int):
                raise TypeError("input_size and width must be integers")
            if not isinstance(meta.weights_sha256, str) or not isinstance(meta.version, str):
                raise TypeError("version and weights_sha256 must be strings")
            if not isinstance(meta.architecture, str):
                raise TypeError("architecture must be a string")
            if not isinstance(meta.architecture_params, dict):
                raise TypeError("architecture_params must be an object")
            return meta
        except (ValueError, TypeError) as exc:
            raise ModelError(f"invalid model metadata: {exc}") from exc


@dataclass(frozen=True)
class ModelArtifact(Generic[M]):
    """A loaded, verified artifact: the network in eval mode plus its metadata.

    ``ModelArtifact[TypeNet]`` without a builder (:func:`load_artifact`), ``ModelArtifact[Module]``
    with one.

    Attributes:
        model: The network with its weights loaded, in eval mode.
        metadata: The artifact's metadata.
        path: The artifact folder.
    """

    model: M
    metadata: ModelMetadata
    path: Path


def build_model(width: int, num_classes: int = len(IMAGE_TYPES)) -> TypeNet:
    """Build an untrained :class:`TypeNet` (uses torch's global RNG for initialization)."""
    model = TypeNet(num_classes=num_classes, width=width)
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs omit memory_format


def weights_bytes(model: nn.Module) -> bytes:
    """Serialize a model's ``state_dict`` exactly as ``weights.pt`` stores it.

    Saving to memory (not to a path) keeps the archive's internal record names independent of the
    file name, so identical weights always give identical bytes and thus the same SHA-256.
    """
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def make_version(weights_sha256: str, when: datetime) -> str:
    """Return ``type-YYYYMMDD-<sha8>`` for weights saved at ``when``."""
    return f"type-{when.astimezone(UTC):%Y%m%d}-{weights_sha256[:8]}"


def save_artifact(
    models_dir: Path,
    model: nn.Module,
    *,
    input_size: int,
    width: int,
    train_config: dict[str, Any] | None = None,
    training_data: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    classes: Sequence[str] = IMAGE_TYPES,
    now: datetime | None = None,
    architecture: str = ARCHITECTURE,
    architecture_params: dict[str, Any] | None = None,
) -> ModelMetadata:
    """Write a new artifact folder and return its metadata.

    The folder is written under a temporary name and renamed into place, so a crash never leaves
    a half-written version that :func:`load_artifact` could pick up. Saving weights that already
    exist under the same version is a no-op that returns the stored metadata.

    Args:
        models_dir: Parent folder of all versions (created if missing).
        model: The trained network.
        input_size: Square input side the network was trained at.
        width: The network's ``width``.
        train_config: Training configuration to record.
        training_data: Description of the training data to record.
        metrics: Held-out metrics to record.
        classes: Output labels in logit order.
        now: Time of saving (default: now, UTC); tests pin it.
        architecture: The network's registry name (:mod:`tagging.ml.architectures`); the
            default, :data:`ARCHITECTURE`, is the synthetic trainer's TypeNet.
        architecture_params: More parameters that rebuild it (e.g. ``dropout``); ``width`` and
            ``input_size`` are always recorded.

    Returns:
        The saved (or already present) artifact's metadata.
    """
    now = now or datetime.now(UTC)
    blob = weights_bytes(model)
    sha = hashlib.sha256(blob).hexdigest()
    version = make_version(sha, now)
    metadata = ModelMetadata(
        version=version,
        classes=tuple(classes),
        input_size=input_size,
        width=width,
        architecture=architecture,
        created_at=now.astimezone(UTC).isoformat(timespec="seconds"),
        weights_sha256=sha,
        torch_version=torch.__version__,
        train_config=dict(train_config or {}),
        training_data=dict(training_data or {}),
        metrics=dict(metrics or {}),
        architecture_params={
            **(architecture_params or {}),
            "width": width,
            "input_size": input_size,
        },
    )
    models_dir.mkdir(parents=True, exist_ok=True)
    final = models_dir / version
    if final.exists():
        return read_metadata(models_dir, version)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=models_dir))
    try:
        (staging / WEIGHTS_FILE).write_bytes(blob)
        (staging / METADATA_FILE).write_text(metadata.to_json())
        staging.rename(final)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if final.exists():  # another process saved the same weights at the same moment
            return read_metadata(models_dir, version)
        raise
    return metadata


def read_metadata(models_dir: Path, version: str) -> ModelMetadata:
    """Read one version's ``metadata.json`` without loading its weights.

    Raises:
        ModelError: The version folder or its metadata is missing or invalid.
    """
    _check_version_name(version)
    path = models_dir / version / METADATA_FILE
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        if not (models_dir / version).is_dir():
            raise ModelError(f"model version {version!r} not found in {models_dir}") from exc
        raise ModelError(f"model {version!r} has no {METADATA_FILE} in {path.parent}") from exc
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    metadata = ModelMetadata.from_json(text)
    if metadata.version != version:
        raise ModelError(
            f"{path} says version {metadata.version!r} but lives in folder {version!r}"
        )
    return metadata


@overload
def load_artifact(
    models_dir: Path,
    version: str | None = None,
    *,
    expected_classes: Sequence[str] = IMAGE_TYPES,
    build: None = None,
) -> ModelArtifact[TypeNet]: ...


@overload
def load_artifact(
    models_dir: Path,
    version: str | None = None,
    *,
    expected_classes: Sequence[str] = IMAGE_TYPES,
    build: ArchitectureBuilder,
) -> ModelArtifact[nn.Module]: ...


def load_artifact(
    models_dir: Path,
    version: str | None = None,
    *,
    expected_classes: Sequence[str] = IMAGE_TYPES,
    build: ArchitectureBuilder | None = None,
) -> ModelArtifact[Any]:
    """Load and verify an artifact.

    Args:
        models_dir: Parent folder of all versions.
        version: The version to load; ``None`` loads the one named in ``PRODUCTION``, or the
            newest version when there is no ``PRODUCTION`` file.
        expected_classes: The labels the caller maps outputs to; the artifact must match exactly,
            in order, or its predictions would be silently mislabelled.
        build: Builds the artifact's architecture by name
            (:func:`tagging.ml.architectures.build_architecture`); without it only the small CNN
            (:class:`TypeNet`) can be loaded.

    Returns:
        The network in eval mode with its metadata.

    Raises:
        ModelError: No model, missing files, a SHA-256 mismatch (corrupt or replaced weights),
            different classes, an unknown architecture, or weights that do not fit the network.
    """
    if version is None:
        version = production_version(models_dir)
    if version is None:
        versions = list_versions(models_dir)
        if not versions:
            raise ModelError(f"no Image Type model in {models_dir}: train one first")
        version = versions[-1]
    metadata = read_metadata(models_dir, version)
    folder = models_dir / version
    if tuple(metadata.classes) != tuple(expected_classes):
        raise ModelError(
            f"model {version} predicts classes {list(metadata.classes)}, "
            f"expected {list(expected_classes)}"
        )
    name = metadata.architecture_name
    if build is None and name != SMALL_CNN:
        raise ModelError(
            f"model {version} uses architecture {metadata.architecture!r}; without the "
            f"architectures registry this code builds only {SMALL_CNN!r} ({ARCHITECTURE})"
        )
    try:
        blob = (folder / WEIGHTS_FILE).read_bytes()
    except OSError as exc:
        raise ModelError(f"model {version} has no readable {WEIGHTS_FILE}: {exc}") from exc
    sha = hashlib.sha256(blob).hexdigest()
    if sha != metadata.weights_sha256:
        raise ModelError(
            f"model {version}: {WEIGHTS_FILE} has SHA-256 {sha[:12]}…, metadata says "
            f"{metadata.weights_sha256[:12]}…; the file is corrupt or was replaced"
        )
    model: nn.Module
    if build is None:
        model = build_model(metadata.width, num_classes=len(metadata.classes))
    else:
        try:
            model = build(name, len(metadata.classes), metadata.width)
        except ValueError as exc:  # an unknown name or a width out of range
            raise ModelError(f"model {version}: cannot build its network: {exc}") from exc
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # torch raises many types for a bad archive
        raise ModelError(f"model {version}: cannot load {WEIGHTS_FILE}: {exc}") from exc
    model.eval()
    return ModelArtifact(model=model, metadata=metadata, path=folder)


def list_versions(models_dir: Path) -> list[str]:
    """Return the versions in ``models_dir``, oldest first.

    A version is a folder named like a version that has a ``metadata.json``; ordering is by the
    metadata's ``created_at`` (then by name), so two versions saved on one day keep their order.
    """
    if not models_dir.is_dir():
        return []
    keyed: list[tuple[str, str]] = []
    for folder in models_dir.iterdir():
        if not (_VERSION_RE.match(folder.name) and (folder / METADATA_FILE).is_file()):
            continue
        try:
            created = read_metadata(models_dir, folder.name).created_at
        except ModelError:
            created = ""  # still listed, so an operator sees it; loading it will explain
        keyed.append((created, folder.name))
    return [name for _, name in sorted(keyed)]


def production_version(models_dir: Path) -> str | None:
    """Return the version named in ``<models_dir>/PRODUCTION``, or ``None`` without one."""
    try:
        text = (models_dir / PRODUCTION_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelError(f"cannot read {models_dir / PRODUCTION_FILE}: {exc}") from exc
    return text or None


def promote(models_dir: Path, version: str) -> ModelMetadata:
    """Make ``version`` the production model.

    The artifact is fully loaded and verified first, so ``PRODUCTION`` never names a broken
    version; the pointer is replaced atomically, so a reader sees the old or the new name.

    Returns:
        The promoted version's metadata.

    Raises:
        ModelError: The version does not exist or fails verification.
    """
    metadata = load_artifact(models_dir, version).metadata
    fd, tmp = tempfile.mkstemp(prefix=".PRODUCTION-", dir=models_dir)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(version + "\n")
        os.replace(tmp, models_dir / PRODUCTION_FILE)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ModelError(f"cannot write {models_dir / PRODUCTION_FILE}: {exc}") from exc
    return metadata


def _check_version_name(version: str) -> None:
    # The name becomes a path component: refuse anything that could escape models_dir.
    if not _VERSION_RE.match(version):
        raise ModelError(f"{version!r} is not a model version (expected type-YYYYMMDD-xxxxxxxx)")
