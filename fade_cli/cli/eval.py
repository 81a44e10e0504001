"""`fade eval`: parse the flags, run the benchmark over classes, shots and seeds, print the table."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import __version__
from ..errors import UsageError
from ..methods import DEFAULT_METHOD
from ..model.backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .common import (
    BatchOpt, CacheOpt, ClsPromptsOpt, ClsScaleOpt, DeviceOpt, FgMatchingOpt, MethodOpt, ModelOpt, MultOpt,
    MultiShapeOpt, NoAlignerOpt, NoRtpOpt, ObjectPriorOpt, PositionsOpt, PrecisionOpt, PretrainedOpt,
    PromptFilterOpt, QuietOpt, ScalesOpt, SegPromptsOpt, SmoothOpt, VisFeatOpt, WeightOpt, WindowsOpt, log,
    progress_bar, save_bytes, scorer_spec, split_list,
)


def eval_command(
    ctx: typer.Context,
    root: Annotated[Path, typer.Argument(help="Dataset root (MVTec-AD, VisA, or a folder with good/ bad/ [masks/] [train/]).")],
    dataset: Annotated[str, typer.Option("--dataset", help="mvtec, visa or folder.")] = "mvtec",
    classes: Annotated[Optional[list[str]], typer.Option("--classes", help="Classes to evaluate, comma-separated or repeated. Default: all found.", show_default=False)] = None,
    method: MethodOpt = DEFAULT_METHOD,
    shots: Annotated[str, typer.Option("--shots", help="Shot counts, comma-separated; 0 = zero-shot.")] = "0",
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds 0..N-1 that choose the few-shot references.")] = 5,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for results.json, results.csv, per_image.csv and per-class checkpoints.")] = Path("fade-eval"),
    eval_size: Annotated[int, typer.Option("--eval-size", min=16, help="Maps and masks are compared at this size (official: 448).")] = 448,
    split_csv: Annotated[Optional[Path], typer.Option("--split-csv", help="VisA split file. Default: ROOT/split_csv/1cls.csv.", show_default=False)] = None,
    save_maps: Annotated[bool, typer.Option("--save-maps", help="Also write every map (.npy at the evaluation size) under OUT/maps.")] = False,
    save_overlays: Annotated[bool, typer.Option("--save-overlays", help="Also write heatmap overlays under OUT/overlays.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Keep classes already finished in OUT with the same settings.")] = False,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    scales: ScalesOpt = "240,448,896",
    cls_scale: ClsScaleOpt = 240,
    cls_prompts: ClsPromptsOpt = None,
    seg_prompts: SegPromptsOpt = None,
    vision_multiplier: MultOpt = None,
    vision_weight: WeightOpt = None,
    vision_feature: VisFeatOpt = None,
    windows: WindowsOpt = "2,3",
    no_aligner: NoAlignerOpt = False,
    no_rtp: NoRtpOpt = False,
    prompt_filter: PromptFilterOpt = None,
    positions: PositionsOpt = None,
    object_prior: ObjectPriorOpt = None,
    multi_shape: MultiShapeOpt = None,
    smooth: SmoothOpt = None,
    fg_matching: FgMatchingOpt = None,
    batch_size: BatchOpt = 1,
    cache_dir: CacheOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Reproduce the papers' tables: per-class image AUROC/AUPR/F1-max, pixel AUROC/F1-max and PRO,
    mean ± std over seeds, as a Markdown table on stdout and JSON/CSV files under --out."""
    method_values = dict(locals())
    from ..data.datasets import DATASETS, list_classes, read_split
    from ..evaluation.benchmark import evaluate_class, markdown_table, runs_for, summarize
    from ..prompts.text import TextEncoderCache
    from ..engines.runner import build_pipeline, load_spec_backbone

    if dataset not in DATASETS:
        raise UsageError(f"--dataset {dataset}: expected one of {', '.join(DATASETS)}")
    try:
        shot_list = sorted({int(s) for s in shots.split(",") if s.strip()})
    except ValueError:
        raise UsageError(f"--shots {shots!r}: expected comma-separated integers like 0,1,2,4") from None
    if not shot_list or min(shot_list) < 0:
        raise UsageError("--shots: give one or more counts >= 0")
    available = list_classes(root, dataset, split_csv)
    wanted = list(split_list(classes)) or available
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise UsageError(f"unknown class(es) {', '.join(unknown)} under {root} (found: {', '.join(available)})")
    spec = scorer_spec(ctx, method, "object", model, pretrained, device, precision, method_values, map_size=eval_size)
    runs = runs_for(shot_list, seeds)
    backbone = load_spec_backbone(spec)
    cache = TextEncoderCache(backbone, cache_dir)
    built: dict = {}  # the first class's pipeline, built early for the settings record, is used once more

    def make_pipeline(name: str):
        return built.pop(name, None) or build_pipeline(replace(spec, class_name=name), backbone, None, cache)

    probe = built[wanted[0]] = make_pipeline(wanted[0])
    banks = probe.banks
    settings = {"dataset": dataset, "root": str(root.absolute()), "method": probe.method_label, "model": backbone.model_name,
                "pretrained": pretrained, "weights_id": backbone.weights_id, "config": probe.config.as_dict(), "banks": banks,
                "shots": shot_list, "seeds": seeds, "eval_size": eval_size, "fade_version": __version__}
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    checkpoints = out / "classes"
    results = []
    for name in wanted:
        ckpt = checkpoints / f"{name}.json"
        if resume and ckpt.is_file():
            saved = json.loads(ckpt.read_text())
            if saved.get("settings") == fingerprint:
                log(quiet, f"{name}: finished earlier, kept")
                results.append(saved)
                continue
        split = read_split(root, dataset, name if dataset != "folder" else None, split_csv)
        progress = progress_bar(len(split.test), quiet)
        task = progress.add_task(name, total=len(split.test)) if progress else None
        t0 = time.perf_counter()
        if progress:
            progress.start()
        try:
            res = evaluate_class(backbone, make_pipeline, split, runs, eval_size, batch_size,
                                 out / "maps" if save_maps else None, out / "overlays" if save_overlays else None,
                                 on_image=(lambda: progress.update(task, advance=1)) if progress else None)
        finally:
            if progress:
                progress.stop()
        seconds = time.perf_counter() - t0
        record = {**res.as_dict(), "settings": fingerprint, "seconds": round(seconds, 2),
                  "seconds_per_image": round(seconds / len(split.test), 3)}
        save_bytes(ckpt, json.dumps(record, indent=1).encode())
        log(quiet, f"{name}: {len(split.test)} test images, {seconds:.1f} s ({seconds / len(split.test):.2f} s/image)")
        results.append(record)
    summary = summarize(results, runs)
    save_bytes(out / "results.json", json.dumps({"settings": settings, "summary": summary,
                                                 "classes": [{k: v for k, v in r.items() if k != "images"} for r in results]},
                                                indent=1).encode())
    _write_eval_csvs(out, results)
    print(markdown_table(summary))
    log(quiet, f"wrote {out / 'results.json'}, {out / 'results.csv'}, {out / 'per_image.csv'}")


def _write_eval_csvs(out: Path, results: list[dict]) -> None:
    import csv
    import io as _io

    from ..evaluation.benchmark import METRIC_KEYS

    table = _io.StringIO()
    w = csv.writer(table)
    w.writerow(["class", "shots", "seed", *METRIC_KEYS, "references"])
    for r in results:
        for run in r["runs"]:
            w.writerow([r["class"], run["shots"], run["seed"], *[run["metrics"].get(m, "") for m in METRIC_KEYS],
                        ";".join(run["references"])])
    save_bytes(out / "results.csv", table.getvalue().encode())
    per_image = _io.StringIO()
    w = csv.writer(per_image)
    w.writerow(["class", "run", "path", "label", "defect", "score"])
    for r in results:
        for img in r["images"]:
            for run, score in img["scores"].items():
                w.writerow([r["class"], run, img["path"], img["label"], img["defect"], score])
    save_bytes(out / "per_image.csv", per_image.getvalue().encode())
