"""The recipe of a dataset version, and its exact replay.

A :class:`Recipe` records everything that turned the inputs into the manifest: the parent version,
the cut-off date of the fixes pulled, the random seed, and the steps in order with their
parameters, including the reviewers' decisions and the crop boxes (human and model judgements that
a replay must not redo). :func:`replay` rebuilds the manifest from the recipe and the inputs; the
same recipe and inputs give a byte-identical manifest.

A replay always starts from :func:`tagging.curation.extend.extend` (the parent's rows plus the new
ones), so that every later step sees the whole version: a new image that is a near-duplicate of a
parent's test image must be found, and must go to test with it.

JSON form (``Recipe.to_json``; keys sorted, so equal recipes give equal text)::

    {"format": 1, "seed": 7, "parent": "3", "cutoff": "2025-01-31T00:00:00+00:00",
     "steps": [{"step": "size", "min_width": 200, "min_height": 150}, ...]}
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from tagging.curation.crop import apply_crops
from tagging.curation.duplicates import MAX_DISTANCE, cluster_duplicates, drop_conflicting
from tagging.curation.extend import extend
from tagging.curation.manifest import Box, Embeddings, Manifest, ManifestRow
from tagging.curation.prune import Decision, apply_decisions
from tagging.curation.size import drop_small
from tagging.curation.split import NamedTestSet, assign_splits
from tagging.errors import InvalidInput

FORMAT = 1
"""The recipe JSON's format number; bump it when a step's meaning changes."""


@dataclass(frozen=True)
class CurationInputs:
    """What a recipe is replayed over, as the storage layer loads it.

    Attributes:
        parent: The parent version's manifest (empty for a first version).
        new_rows: The new rows (the team fixes since the cut-off), in fix order.
        embeddings: Feature vectors by ``sha256``, needed by a duplicates step with an
            embedding threshold.
    """

    parent: Manifest = field(default_factory=Manifest)
    new_rows: tuple[ManifestRow, ...] = ()
    embeddings: Embeddings | None = None


@dataclass(frozen=True)
class SizeStep:
    """Exclude images under a minimum size (:func:`tagging.curation.size.drop_small`)."""

    name: ClassVar[str] = "size"
    min_width: int
    min_height: int

    def apply(self, manifest: Manifest, seed: int, inputs: CurationInputs) -> Manifest:
        """Run the step."""
        return drop_small(manifest, self.min_width, self.min_height)


@dataclass(frozen=True)
class DuplicatesStep:
    """Number the near-duplicate clusters
    (:func:`tagging.curation.duplicates.cluster_duplicates`)."""

    name: ClassVar[str] = "duplicates"
    max_distance: int = MAX_DISTANCE
    embedding_threshold: float | None = None
    k: int = 10

    def apply(self, manifest: Manifest, seed: int, inputs: CurationInputs) -> Manifest:
        """Run the step."""
        return cluster_duplicates(
            manifest,
            max_distance=self.max_distance,
            embeddings=inputs.embeddings,
            embedding_threshold=self.embedding_threshold,
            k=self.k,
        )


@dataclass(frozen=True)
class DropConflictsStep:
    """Exclude conflicting clusters (:func:`tagging.curation.duplicates.drop_conflicting`)."""

    name: ClassVar[str] = "drop_conflicts"

    def apply(self, manifest: Manifest, seed: int, inputs: CurationInputs) -> Manifest:
        """Run the step."""
        return drop_conflicting(manifest)


@dataclass(frozen=True)
class PruneStep:
    """Apply the reviewers' decisions (:func:`tagging.curation.prune.apply_decisions`)."""

    name: ClassVar[str] = "prune"
    decisions: tuple[Decision, ...] = ()

    def apply(self, manifest: Manifest, seed: int, inputs: CurationInputs) -> Manifest:
        """Run the step."""
        return apply_decisions(manifest, self.decisions)


@dataclass(frozen=True)
class CropStep:
    """Record crop boxes found when the step was made (:func:`tagging.curation.crop.apply_crops`).

    Attributes:
        boxes: ``(sha256, box)`` pairs, sorted by ``sha256``.
        model: Which crop model found them (``borders``: the embedded default).
    """

    name: ClassVar[str] = "crop"
    boxes: tuple[tuple[str, Box], ...] = ()
    model: str = "borders"

    def apply(self, manifest: Manifest, seed: int, inputs: CurationInputs) -> Manifest:
        """Run the step."""
        return apply_crops(manifest, dict(self.boxes))


def crop_step(boxes: dict[str, Box], model: str = "borders") -> CropStep:
    """A :class:`CropStep` from boxes by ``sha256`` (as :func:`tagging.curation.crop.find_crops`
    returns them), in canonical order."""
    return CropStep(boxes=tuple((sha, _box(boxes[sha])) for sha in sorted(boxes)), model=model)


@dataclass(frozen=True)
class SplitStep:
    """Assign train and test (:func:`tagging.curation.split.assign_splits`), seeded by the
    recipe's seed."""

    name: ClassVar[str] = "split"
    test_fraction: float = 0.2
    named_test_sets: tuple[NamedTestSet, ...] = ()
    keep_existing: bool = True

    def apply(self, manifest: Manifest, seed: int, inputs: CurationInputs) -> Manifest:
        """Run the step."""
        return assign_splits(
            manifest,
            seed=seed,
            test_fraction=self.test_fraction,
            named_test_sets=self.named_test_sets,
            keep_existing=self.keep_existing,
        )


Step = SizeStep | DuplicatesStep | DropConflictsStep | PruneStep | CropStep | SplitStep
"""Any recipe step."""

STEPS: dict[str, type[Step]] = {
    cls.name: cls
    for cls in (SizeStep, DuplicatesStep, DropConflictsStep, PruneStep, CropStep, SplitStep)
}
"""The step classes by their JSON name."""


@dataclass(frozen=True)
class Recipe:
    """How a dataset version was made.

    Attributes:
        seed: The random seed of every seeded step.
        parent: The parent version's id, ``None`` for a first version.
        cutoff: The fixes pulled are those made after this time (timezone-aware), ``None`` for
            all of them.
        steps: The steps after :func:`~tagging.curation.extend.extend`, in order.

    Raises:
        InvalidInput: A naive ``cutoff``, or a split before any duplicates step (the split could
            not keep near-duplicates together).
    """

    seed: int
    parent: str | None = None
    cutoff: datetime | None = None
    steps: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        if self.cutoff is not None and self.cutoff.utcoffset() is None:
            raise InvalidInput("the cut-off must have a time zone")
        clustered = False
        for step in self.steps:
            clustered = clustered or isinstance(step, DuplicatesStep)
            if isinstance(step, SplitStep) and not clustered:
                raise InvalidInput("a split needs a duplicates step before it")

    @classmethod
    def default(
        cls,
        *,
        seed: int,
        parent: str | None = None,
        cutoff: datetime | None = None,
        min_size: tuple[int, int] = (0, 0),
        test_fraction: float = 0.2,
        named_test_sets: Sequence[NamedTestSet] = (),
    ) -> Recipe:
        """The automatic steps (what ``dataset build`` runs): size, duplicates, drop conflicts,
        split. The page inserts the reviewers' prune and crop steps before the split."""
        return cls(
            seed=seed,
            parent=parent,
            cutoff=cutoff,
            steps=(
                SizeStep(*min_size),
                DuplicatesStep(),
                DropConflictsStep(),
                SplitStep(test_fraction=test_fraction, named_test_sets=tuple(named_test_sets)),
            ),
        )

    def with_step(self, step: Step, *, before_split: bool = True) -> Recipe:
        """A copy with ``step`` added: before the first split (a prune or crop decided after
        seeing the clusters), or at the end."""
        steps = list(self.steps)
        at = len(steps)
        if before_split:
            at = next((i for i, s in enumerate(steps) if isinstance(s, SplitStep)), at)
        steps.insert(at, step)
        return dataclasses.replace(self, steps=tuple(steps))

    def to_json(self) -> str:
        """The recipe as JSON, keys sorted: equal recipes give equal text."""
        data = {
            "format": FORMAT,
            "seed": self.seed,
            "parent": self.parent,
            "cutoff": self.cutoff.isoformat() if self.cutoff is not None else None,
            "steps": [_step_to_json(step) for step in self.steps],
        }
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        """Parse :meth:`to_json`'s form.

        Raises:
            InvalidInput: Not JSON, another format, an unknown step or a bad parameter.
        """
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise InvalidInput(f"not a format-{FORMAT} recipe")
            cutoff = data.get("cutoff")
            return cls(
                seed=int(data["seed"]),
                parent=data.get("parent"),
                cutoff=datetime.fromisoformat(cutoff) if cutoff else None,
                steps=tuple(_step_from_json(step) for step in data.get("steps", ())),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidInput(f"invalid recipe: {exc!r}") from exc


def stages(recipe: Recipe, inputs: CurationInputs) -> Iterator[tuple[str, Manifest]]:
    """The manifest after each stage: ``("extend", …)``, then one per step, by step name.

    What a page shows step by step; :func:`replay` is the last one.
    """
    manifest = extend(inputs.parent, inputs.new_rows, parent_version=recipe.parent)
    yield "extend", manifest
    for step in recipe.steps:
        manifest = step.apply(manifest, recipe.seed, inputs)
        yield step.name, manifest


def replay(recipe: Recipe, inputs: CurationInputs) -> Manifest:
    """Rebuild a version's manifest: extend the parent with the new rows, then run the steps.

    Deterministic: the same recipe and inputs give a byte-identical manifest
    (:meth:`Manifest.to_csv`), whatever order the inputs' rows come in (new rows with the same
    ``sha256`` excepted: the last fix wins).
    """
    *_, (_, manifest) = stages(recipe, inputs)
    return manifest


def _step_to_json(step: Step) -> dict[str, Any]:
    data: dict[str, Any] = {"step": step.name}
    if isinstance(step, PruneStep):
        data["decisions"] = [
            {k: v for k, v in dataclasses.asdict(d).items() if v is not None}
            for d in step.decisions
        ]
    elif isinstance(step, CropStep):
        data["boxes"] = {sha: list(box) for sha, box in step.boxes}
        data["model"] = step.model
    elif isinstance(step, SplitStep):
        data.update(dataclasses.asdict(step))
        data["named_test_sets"] = [dataclasses.asdict(t) for t in step.named_test_sets]
    else:
        data.update(dataclasses.asdict(step))
    return data


def _step_from_json(data: Any) -> Step:
    if not isinstance(data, dict) or data.get("step") not in STEPS:
        raise InvalidInput(f"unknown recipe step {data!r:.80}")
    params = {k: v for k, v in data.items() if k != "step"}
    cls = STEPS[data["step"]]
    if cls is PruneStep:
        return PruneStep(tuple(Decision(**d) for d in params.get("decisions", ())))
    if cls is CropStep:
        boxes = params.get("boxes", {})
        return CropStep(
            boxes=tuple((sha, _box(boxes[sha])) for sha in sorted(boxes)),
            model=str(params.get("model", "borders")),
        )
    if cls is SplitStep:
        named = tuple(NamedTestSet(**t) for t in params.pop("named_test_sets", ()))
        return SplitStep(named_test_sets=named, **params)
    return cls(**params)


def _box(values: Sequence[int]) -> Box:
    left, top, right, bottom = (int(v) for v in values)
    return (left, top, right, bottom)
