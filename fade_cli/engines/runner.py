"""Scoring a batch of image files: the work `fade detect` / `fade segment` do per chunk of inputs.

Kept apart from the command-line parsing so that every engine (the local loop of `fade_cli/cli/score.py`, a
Ray actor) builds the same pipeline from the same `ScorerSpec` and turns a chunk of paths into
the same rows and files with `score_chunk`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..data.io import DEFAULT_MAX_PIXELS, load_image, output_stem, overlay, read_ahead, save_npy, save_png
from ..errors import ImageError
from ..methods import get_method

OUTPUT_SUFFIXES = (".map.npy", ".overlay.png", ".mask.png")  # what `segment` writes per image


@dataclass(frozen=True)
class ScorerSpec:
    """Everything needed to (re)build a scoring pipeline in any process; picklable."""

    method: str  # registry name (fade_cli/methods/__init__.py)
    class_name: str
    options: object  # the method's options dataclass
    model: str  # open_clip name (a config JSON is registered first, see `model_config`)
    pretrained: str
    device: str = "auto"
    precision: str = "fp32"
    model_config: Path | None = None  # an open_clip model-config JSON to register before loading


@dataclass(frozen=True)
class OutputSpec:
    """How rows are labelled and which files are written per image."""

    threshold: float
    base: Path  # input paths are mirrored under `out` relative to this
    out: Path | None = None  # None: detect (rows only); a folder: segment
    pixel_threshold: float = 0.5
    max_pixels: int = DEFAULT_MAX_PIXELS
    shots: int = 0
    stems: dict | None = None  # input -> output stem under `out` (data.outputs.plan_stems); else mirrored
    # where the thresholds came from (docs/calibration.md): "fixed", "bank:FILE", "calibration:FILE", ...
    threshold_source: str = "fixed"
    pixel_threshold_source: str = "fixed"
    false_alarm_rate: float | None = None  # the rate asked for, when a threshold is calibrated
    normalise: object | None = None  # a calibrated decisions.calibration.Threshold: rows get normalised_score
    min_region_area: int = 1  # segment: regions of fewer pixels are not listed


@dataclass
class Outcome:
    """One input's result: a row for stdout, or an error line for stderr."""

    path: Path
    row: dict | None = None
    error: str | None = None


def load_spec_backbone(spec: ScorerSpec):
    from ..model.backbone import load_backbone

    if spec.model_config is not None:
        import open_clip

        open_clip.add_model_config(spec.model_config)
    return load_backbone(spec.model, spec.pretrained, spec.device, spec.precision)


def build_pipeline(spec: ScorerSpec, backbone, reference_bank=None, text_cache=None, few_shot: bool | None = None):
    """The method's pipeline for one class (the protocol of fade_cli/methods/base.py)."""
    return get_method(spec.method).pipeline(backbone, spec.options, spec.class_name, reference_bank, text_cache, few_shot)


def score_chunk(pipeline, paths: Sequence[Path], spec: ScorerSpec, output: OutputSpec,
                images: dict | None = None) -> list[Outcome]:
    """Read, score and (for segment) write outputs for a chunk of paths, in order.

    `images` (path -> RGB image, or the reason it could not be read) skips the reading, for
    engines that decode elsewhere (the Ray engine's read tasks)."""
    import time

    outcomes = {p: Outcome(p) for p in paths}
    loaded = {}
    for p in paths:
        try:
            loaded[p] = load_image(p, output.max_pixels) if images is None else images[p]
            if isinstance(loaded[p], str):
                raise ImageError(loaded.pop(p))
        except ImageError as exc:
            outcomes[p].error = str(exc)
    if loaded:
        t = time.perf_counter()
        results = dict(zip(loaded, pipeline(list(loaded.values()))))
        ms = (time.perf_counter() - t) * 1000.0 / len(loaded)
        for p, res in results.items():
            finish_outcome(outcomes[p], pipeline, spec, output, res, loaded[p], ms)
    return [outcomes[p] for p in paths]


def finish_outcome(outcome: Outcome, pipeline, spec: ScorerSpec, output: OutputSpec, res, image, ms: float) -> None:
    """Fill `outcome` from one image's Result: its row, and for segment its files (or an error)."""
    row = {
        "path": str(outcome.path),
        "class": spec.class_name,
        "score": round(res.score, 6),
        **_normalised(res.score, output),
        "anomalous": res.score >= output.threshold,
        "threshold": output.threshold,
        "threshold_source": output.threshold_source,
        **({"false_alarm_rate": output.false_alarm_rate} if output.false_alarm_rate is not None else {}),
        "ms": round(ms, 1),
        "method": pipeline.method_label,
        "shots": output.shots,
        "banks": pipeline.banks,
    }
    if output.out is not None:
        try:
            row.update(pixel_threshold=output.pixel_threshold, pixel_threshold_source=output.pixel_threshold_source)
            stem = (output.stems or {}).get(outcome.path) or output_stem(outcome.path, output.base)
            row.update(write_segmentation(output.out, stem, image, res.map, output.pixel_threshold,
                                          output.min_region_area))
        except OSError as exc:
            outcome.error = f"cannot write outputs under {output.out} ({exc.strerror or exc})"
            return
    outcome.row = row


def score_paths(pipeline, paths: Sequence[Path], spec: ScorerSpec, output: OutputSpec,
                batch_size: int = 1) -> Iterator[Outcome]:
    """`score_chunk` over `paths` in chunks of `batch_size`, outcomes in input order.

    Files are read in threads a few ahead of the chunk being scored (`io.read_ahead`), so
    decoding overlaps the model: on a GPU, reading one file at a time would bound throughput.
    A method that scores whole batches (`scores_whole_batch`) scores the subsets of `paths`
    instead (`engines/subsets.py`)."""
    if pipeline.scores_whole_batch:
        from .subsets import score_subsets

        yield from score_subsets(pipeline, paths, spec, output, batch_size)
        return
    reads = read_ahead(paths, lambda p: _read(p, output.max_pixels), ahead=max(2 * batch_size, 8))
    try:
        while chunk := list(itertools.islice(reads, batch_size)):
            yield from score_chunk(pipeline, [p for p, _ in chunk], spec, output, dict(chunk))
    finally:
        reads.close()


def _read(path: Path, max_pixels: int):
    """The RGB image, or the reason it cannot be read (what `score_chunk` takes as `images`)."""
    try:
        return load_image(path, max_pixels)
    except ImageError as exc:
        return str(exc)


def _normalised(score: float, output: OutputSpec) -> dict:
    if output.normalise is None:
        return {}
    from ..decisions.calibration import normalised_score

    return {"normalised_score": round(normalised_score(score, output.normalise), 6)}


def write_segmentation(out: Path, stem: Path, image, grid_map, pixel_threshold: float, min_region_area: int = 1) -> dict:
    """Float map at the image's size (.npy), heatmap overlay and binary mask (PNG); the mask's
    connected regions (fade_cli/decisions/regions.py) for the row."""
    from PIL import Image

    from ..decisions.normals import full_size_map
    from ..decisions.regions import find_regions

    full = full_size_map(grid_map, image.size)
    base = out / stem
    paths = {kind: base.with_name(base.name + suffix) for kind, suffix in zip(("map", "overlay", "mask"), OUTPUT_SUFFIXES)}
    mask = full >= pixel_threshold
    try:
        save_npy(paths["map"], full)
        save_png(paths["overlay"], overlay(image, full))
        save_png(paths["mask"], Image.fromarray((mask * 255).astype(np.uint8), mode="L"))
    except BaseException:
        # Ctrl-C or a full disk mid-image: discard this image's outputs, so no partial set remains.
        for p in paths.values():
            p.unlink(missing_ok=True)
        raise
    return {
        "map_max": round(float(full.max()), 6),
        "anomalous_fraction": round(float(mask.mean()), 6),
        "regions": [r.as_dict() for r in find_regions(mask, full, min_region_area)],
        "outputs": {k: str(v) for k, v in paths.items()},
    }
