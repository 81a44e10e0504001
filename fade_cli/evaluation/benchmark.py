"""Evaluation as a library: `run_benchmark(spec, root, ...)` gives the papers' per-class tables
on MVTec-AD, VisA or a plain folder, writes results.json / results.csv / per_image.csv and
per-class checkpoints (for `resume`), and returns what results.json holds. `fade eval` only
parses its flags into these arguments and prints the summary.

For one class, every test image is embedded once; each (shots, seed) configuration then scores
those embeddings with its own reference bank (the references chosen as the official code does
for that seed). Maps are kept at the patch grid and resized to the evaluation size (448 by
default) per configuration when its metrics are computed, so memory stays small.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..data.datasets import ClassSplit, DatasetError, load_mask, sample_references
from ..data.io import atomic_write, load_image, overlay, read_ahead, save_npy, save_png
from ..errors import ImageError, UsageError
from ..decisions.operating import calibration_sample, operating_point, score_calibration_images
from ..errors import ImageError
from ..methods.memory import MemoryBank
from .metrics import evaluate, resize_map, resize_mask

METRIC_KEYS = ("image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pixel_f1_max", "pro", "far", "miss")


@dataclass(frozen=True)
class Run:
    """One evaluated configuration of a class."""

    shots: int
    seed: int

    @property
    def label(self) -> str:
        return f"{self.shots}shot_seed{self.seed}"


def runs_for(shots: Sequence[int], seeds: int) -> list[Run]:
    """0-shot does not depend on the seed: it runs once (seed 0)."""
    return [Run(k, s) for k in sorted(set(shots)) for s in (range(1) if k == 0 else range(seeds))]


@dataclass
class ClassResult:
    class_name: str
    runs: list[dict] = field(default_factory=list)  # {shots, seed, references, metrics, curves}
    images: list[dict] = field(default_factory=list)  # {path, label, defect, scores: {run label: score}}

    def as_dict(self) -> dict:
        return {"class": self.class_name, "runs": self.runs, "images": self.images}


def _bank_for(pipeline, refs: list[Path], cache: dict[Path, MemoryBank]) -> MemoryBank:
    """A k-shot bank from per-image banks, each reference embedded once across seeds."""
    for p in refs:
        if p not in cache:
            try:
                img = load_image(p)
            except ImageError as exc:
                raise DatasetError(f"{p}: {exc}") from None
            cache[p] = pipeline.embed_references([img])
    return MemoryBank.concat([cache[p] for p in refs])


def evaluate_class(
    make_pipeline: Callable[[str], object],
    split: ClassSplit,
    runs: Sequence[Run],
    eval_size: int = 448,
    batch_size: int = 1,
    maps_dir: Path | None = None,
    overlays_dir: Path | None = None,
    on_image: Callable[[], None] | None = None,
    calibration_images: int = 0,
    false_alarm_rate: float = 0.01,
) -> ClassResult:
    """Metrics of every run of one class (values in percent, as the papers' tables).

    `make_pipeline(class_name)` gives the method's zero-shot pipeline (FADE, ALFA, ...); its
    `few_shot_variant()` scores the same embeddings against each run's reference bank.
    With `calibration_images` > 0, that many train/good images (not a run's references) set
    each run's thresholds at `false_alarm_rate`, and the run also reports the false-alarm and
    miss rates they give on the test set (`operating_point`, and far / miss in percent)."""
    if not split.test:
        raise DatasetError(f"class {split.class_name}: no test images")
    zero = make_pipeline(split.class_name)
    if getattr(zero, "scores_whole_batch", False) and any(r.shots for r in runs):
        raise UsageError(f"--shots: {zero.method_label} is zero-shot (it scores the test images against each other); use --shots 0")
    few = zero.few_shot_variant() if any(r.shots for r in runs) else None
    ref_cache: dict[Path, MemoryBank] = {}
    banks: dict[Run, MemoryBank] = {}
    result = ClassResult(split.class_name)
    for run in runs:
        refs = [s.image for s in sample_references(split.train, run.shots, run.seed)] if run.shots else []
        if run.shots:
            banks[run] = _bank_for(few, refs, ref_cache)
        result.runs.append({"shots": run.shots, "seed": run.seed, "references": [str(p) for p in refs]})

    has_masks = any(s.mask is not None for s in split.test)
    labels, masks = [], []
    scores: dict[Run, list[float]] = {r: [] for r in runs}
    grid_maps: dict[Run, list[torch.Tensor]] = {r: [] for r in runs}
    extra = (few.bank_layout.feature,) if few else ()

    def read(sample):  # in a reader thread: the image, and its mask at the evaluation size
        try:
            image = load_image(sample.image)
        except ImageError as exc:
            raise DatasetError(f"{sample.image}: {exc}") from None
        return image, (resize_mask(load_mask(sample.mask, image.size), eval_size) if has_masks else None)

    def scored_chunks():
        """(chunk of (sample, (image, mask)), {run: Results}) in test order."""
        if getattr(zero, "scores_whole_batch", False):  # MuSc: each subset of the test set scored together
            yield from _scored_subsets(zero, split.test, read, batch_size)
            return
        with contextlib.closing(read_ahead(split.test, read, ahead=max(2 * batch_size, 8))) as reads:
            while chunk := list(itertools.islice(reads, batch_size)):
                embeddings = zero.embed([image for _, (image, _) in chunk], extra_features=extra)
                yield chunk, {r: (few.score(embeddings, banks[r]) if r.shots else zero.score(embeddings)) for r in runs}

    for chunk, outcomes in scored_chunks():
        for i, (s, (image, mask)) in enumerate(chunk):
            labels.append(s.label)
            if has_masks:
                masks.append(mask)
            row = {"path": str(s.image), "label": s.label, "defect": s.defect, "scores": {}}
            for r in runs:
                res = outcomes[r][i]
                scores[r].append(res.score)
                grid_maps[r].append(res.map)
                row["scores"][r.label] = round(res.score, 6)
                _save_inspection(maps_dir, overlays_dir, r, split, s.image, image, res.map, eval_size)
            result.images.append(row)
            if on_image:
                on_image()

    y = np.asarray(labels, dtype=int)
    if y.min() == y.max():
        raise DatasetError(f"class {split.class_name}: the test set has only {'anomalous' if y[0] else 'good'} images; metrics need both")
    mask_arr = np.stack(masks) if has_masks else None
    normals = _calibration_scores(zero, few, banks, result.runs, runs, split, calibration_images, eval_size, batch_size, extra)
    for entry, r in zip(result.runs, runs):
        maps = resize_map(torch.stack(grid_maps[r]).numpy(), eval_size) if has_masks else None
        curves: dict = {}  # ROC and PRO points, thinned, for the report's plots
        entry["metrics"] = {k: round(v, 4) for k, v in evaluate(y, np.asarray(scores[r]), mask_arr, maps, curves=curves).items()}
        entry["curves"] = curves
        if r in normals:
            entry["operating_point"] = point = operating_point(false_alarm_rate, *normals[r], scores[r], y, maps, mask_arr)
            if "image" in point:
                entry["metrics"].update(far=round(100 * point["image"]["false_alarm_rate"], 4),
                                        miss=round(100 * point["image"]["miss_rate"], 4))
    return result


def _scored_subsets(pipeline, samples, read, batch_size: int):
    """A batch method's (subset, {0-shot run: Results}): each subset read and embedded
    `batch_size` images at a time, then scored as a whole (`engines/subsets.py` for files)."""
    from ..methods.base import subsets

    for part in subsets(len(samples), pipeline.options.subset_size):
        members = [samples[i] for i in part]
        with contextlib.closing(read_ahead(members, read, ahead=max(2 * batch_size, 8))) as reads:
            chunk = [(s, item) for s, item in reads]
        parts = [pipeline.embed([image for _, (image, _) in chunk[i : i + batch_size]])
                 for i in range(0, len(chunk), batch_size)]
        yield chunk, {Run(0, 0): pipeline.score(pipeline.concat_embeddings(parts))}
def _calibration_scores(zero, few, banks, entries, runs, split: ClassSplit, count: int, eval_size: int,
                        batch_size: int, extra) -> dict:
    """Each run's normal scores from `count` train/good images (decisions/operating.py)."""
    if count <= 0 or not split.train:
        return {}

    def load(path):
        try:
            return load_image(path)
        except ImageError as exc:
            raise DatasetError(f"{path}: {exc}") from None

    references = {r: {Path(p) for p in entry["references"]} for entry, r in zip(entries, runs)}
    return score_calibration_images(zero, few, banks, references, calibration_sample(split.train, count), eval_size,
                                    batch_size, extra, load)


def _save_inspection(maps_dir, overlays_dir, run: Run, split: ClassSplit, path: Path, image, grid_map, size: int) -> None:
    if maps_dir is None and overlays_dir is None:
        return
    rel = Path(split.class_name) / run.label / (path.parent.name + "_" + path.stem)
    full = resize_map(grid_map.numpy(), size)
    if maps_dir is not None:
        save_npy((maps_dir / rel).with_suffix(".npy"), full.astype(np.float32))
    if overlays_dir is not None:
        save_png((overlays_dir / rel).with_suffix(".png"), overlay(image.resize((size, size)), full))


def summarize(class_results: Sequence[dict], runs: Sequence[Run]) -> dict:
    """mean ± std over seeds per class and shots; the 'mean' row averages classes per seed first."""
    out: dict = {"classes": {}, "mean": {}}
    shots_values = sorted({r.shots for r in runs})
    for cr in class_results:
        per = out["classes"][cr["class"]] = {}
        for k in shots_values:
            metrics = [run["metrics"] for run in cr["runs"] if run["shots"] == k]
            per[str(k)] = _mean_std(metrics)
    for k in shots_values:
        seeds = sorted({r.seed for r in runs if r.shots == k})
        per_seed = []
        for seed in seeds:
            rows = [run["metrics"] for cr in class_results for run in cr["runs"] if run["shots"] == k and run["seed"] == seed]
            keys = [m for m in METRIC_KEYS if all(m in row for row in rows)]
            per_seed.append({m: float(np.mean([row[m] for row in rows])) for m in keys})
        out["mean"][str(k)] = _mean_std(per_seed)
    return out


def _mean_std(rows: Sequence[dict]) -> dict:
    keys = [m for m in METRIC_KEYS if rows and all(m in r for r in rows)]
    return {m: {"mean": round(float(np.mean([r[m] for r in rows])), 4), "std": round(float(np.std([r[m] for r in rows])), 4),
                "n": len(rows)} for m in keys}


def markdown_table(summary: dict) -> str:
    """One Markdown table: a row per (shots, class) and the mean rows; values mean ± std."""
    names = {"image_auroc": "AUROC", "image_aupr": "AUPR", "image_f1_max": "F1-max",
             "pixel_auroc": "pAUROC", "pixel_f1_max": "pF1-max", "pro": "PRO", "far": "FAR", "miss": "Miss"}
    present = [m for m in METRIC_KEYS if any(m in v for c in summary["classes"].values() for v in c.values())]
    lines = ["| shots | class | " + " | ".join(names[m] for m in present) + " |",
             "|---|---|" + "---|" * len(present)]

    def cell(stats: dict, m: str) -> str:
        if m not in stats:
            return "–"
        s = stats[m]
        return f"{s['mean']:.1f}" + (f" ± {s['std']:.1f}" if s["n"] > 1 else "")

    for k in summary["mean"]:
        for cls, per in summary["classes"].items():
            lines.append(f"| {k} | {cls} | " + " | ".join(cell(per[k], m) for m in present) + " |")
        lines.append(f"| {k} | **mean** | " + " | ".join(cell(summary["mean"][k], m) for m in present) + " |")
    return "\n".join(lines)


# ---- the whole benchmark ---------------------------------------------------------------------
def run_benchmark(
    spec,
    root: Path,
    *,
    dataset: str = "mvtec",
    classes: Sequence[str] = (),
    shots: Sequence[int] = (0,),
    seeds: int = 5,
    out: Path = Path("fade-eval"),
    eval_size: int = 448,
    split_csv: Path | None = None,
    save_maps: bool = False,
    save_overlays: bool = False,
    resume: bool = False,
    batch_size: int = 1,
    backbone=None,
    text_cache=None,
    cache_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
    progress: Callable[[str, int], contextlib.AbstractContextManager] | None = None,
    calibration_images: int = 50,
    false_alarm_rate: float = 0.01,
    write_report: bool = True,
) -> dict:
    """Evaluate `spec`'s method (an engines.runner.ScorerSpec; its class name is replaced per class)
    on every class (default: all found) for each shot count (0 = zero-shot) and `seeds` seeds.

    Returns {"settings", "summary", "classes"} as written to OUT/results.json, and writes OUT/
    results.csv, OUT/per_image.csv, OUT/classes/CLASS.json (a finished class is kept by `resume`
    when its settings are the same; it holds the runs' ROC and PRO curve points) and, with
    `write_report`, OUT/report.html (fade_cli.report.write_eval_report). `backbone` and `text_cache` default to the spec's model and a
    text cache in `cache_dir` (default: $FADE_CACHE_DIR or ~/.cache/fade); `log` gets progress lines; `progress(class, n_images)` is a context
    manager giving a callable to call once per image. `calibration_images` train/good images
    calibrate each run's thresholds at `false_alarm_rate` for its operating point (0 = off;
    decisions/operating.py)."""
    from dataclasses import replace

    from .. import __version__
    from ..data.datasets import DATASETS, list_classes, read_split
    from ..engines.runner import build_pipeline, load_spec_backbone
    from ..errors import UsageError
    from ..prompts.text import TextEncoderCache

    say = log or (lambda message: None)
    if not 0.0 < false_alarm_rate < 1.0:
        raise UsageError(f"--false-alarm-rate {false_alarm_rate}: expected a number between 0 and 1 (e.g. 0.01)")
    if dataset not in DATASETS:
        raise UsageError(f"--dataset {dataset}: expected one of {', '.join(DATASETS)}")
    shot_list = sorted(set(int(k) for k in shots))
    if not shot_list or min(shot_list) < 0:
        raise UsageError("--shots: give one or more counts >= 0")
    available = list_classes(root, dataset, split_csv)
    wanted = list(classes) or available
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise UsageError(f"unknown class(es) {', '.join(unknown)} under {root} (found: {', '.join(available)})")
    runs = runs_for(shot_list, seeds)
    backbone = backbone or load_spec_backbone(spec)
    cache = text_cache or TextEncoderCache(backbone, cache_dir)
    built: dict = {}  # the first class's pipeline, built early for the settings record, is used once more

    def make_pipeline(name: str):
        return built.pop(name, None) or build_pipeline(replace(spec, class_name=name), backbone, None, cache)

    probe = built[wanted[0]] = make_pipeline(wanted[0])
    settings = {"dataset": dataset, "root": str(Path(root).absolute()), "method": probe.method_label,
                "model": backbone.model_name, "pretrained": spec.pretrained, "weights_id": backbone.weights_id,
                "config": probe.config.as_dict(), "banks": probe.banks, "shots": shot_list, "seeds": seeds,
                "eval_size": eval_size, "fade_version": __version__, "calibration_images": calibration_images,
                "false_alarm_rate": false_alarm_rate}
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    results = []
    for name in wanted:
        ckpt = out / "classes" / f"{name}.json"
        if resume and ckpt.is_file():
            saved = json.loads(ckpt.read_text())
            if saved.get("settings") == fingerprint:
                say(f"{name}: finished earlier, kept")
                results.append(saved)
                continue
        split = read_split(root, dataset, name if dataset != "folder" else None, split_csv)
        t0 = time.perf_counter()
        with (progress(name, len(split.test)) if progress else contextlib.nullcontext(None)) as on_image:
            res = evaluate_class(make_pipeline, split, runs, eval_size, batch_size,
                                 out / "maps" if save_maps else None, out / "overlays" if save_overlays else None,
                                 on_image=on_image, calibration_images=calibration_images,
                                 false_alarm_rate=false_alarm_rate)
        seconds = time.perf_counter() - t0
        record = {**res.as_dict(), "settings": fingerprint, "seconds": round(seconds, 2),
                  "seconds_per_image": round(seconds / len(split.test), 3)}
        _save_json(ckpt, record)
        say(f"{name}: {len(split.test)} test images, {seconds:.1f} s ({seconds / len(split.test):.2f} s/image)")
        results.append(record)
    summary = summarize(results, runs)
    report = {"settings": settings, "summary": summary,  # curves stay in the class records: results.json stays short
              "classes": [{k: v for k, v in r.items() if k != "images"}
                          | {"runs": [{k: v for k, v in run.items() if k != "curves"} for run in r["runs"]]} for r in results]}
    _save_json(out / "results.json", report)
    write_csvs(out, results)
    if write_report:
        from ..report import write_eval_report

        say(f"wrote {write_eval_report(out, summary, results, settings)}")
    return report


def _save_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda fh: fh.write(json.dumps(data, indent=1).encode()))


def write_csvs(out: Path, results: list[dict]) -> None:
    """OUT/results.csv (a row per class, shots and seed) and OUT/per_image.csv (a row per image and run)."""
    table = io.StringIO()
    w = csv.writer(table)
    w.writerow(["class", "shots", "seed", *METRIC_KEYS, "references"])
    for r in results:
        for run in r["runs"]:
            w.writerow([r["class"], run["shots"], run["seed"], *[run["metrics"].get(m, "") for m in METRIC_KEYS],
                        ";".join(run["references"])])
    atomic_write(out / "results.csv", lambda fh: fh.write(table.getvalue().encode()))
    per_image = io.StringIO()
    w = csv.writer(per_image)
    w.writerow(["class", "run", "path", "label", "defect", "score"])
    for r in results:
        for img in r["images"]:
            for run, score in img["scores"].items():
                w.writerow([r["class"], run, img["path"], img["label"], img["defect"], score])
    atomic_write(out / "per_image.csv", lambda fh: fh.write(per_image.getvalue().encode()))
