"""`fade eval`: parse the flags, run the benchmark over classes, shots and seeds, print the table."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from ..methods import DEFAULT_METHOD
from ..model.backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .common import (
    BatchOpt, CacheOpt, DeviceOpt, MethodOpt, ModelOpt, PrecisionOpt, PretrainedOpt, QuietOpt, ScalesOpt,
    command_values, log, progress_bar, scorer_spec, split_list, with_method_flags,
)


@with_method_flags()
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
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the results of an earlier evaluation in OUT.")] = False,
    calibration_images: Annotated[int, typer.Option("--calibration-images", min=0, metavar="N", help="Train/good images (spread over the class's train set; never a run's references) that calibrate each run's thresholds at --false-alarm-rate; FAR and Miss report the test-set false-alarm and miss rates there. 0 = off.")] = 50,
    false_alarm_rate: Annotated[float, typer.Option("--false-alarm-rate", metavar="RATE", help="The false-alarm rate (between 0 and 1) the thresholds are calibrated for (docs/calibration.md).")] = 0.01,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    scales: ScalesOpt = "240,448,896",
    batch_size: BatchOpt = 1,
    cache_dir: CacheOpt = None,
    quiet: QuietOpt = False,
    **method_flags,
) -> None:
    """Reproduce the papers' tables: per-class image AUROC/AUPR/F1-max, pixel AUROC/F1-max and PRO,
    mean ± std over seeds, as a Markdown table on stdout and JSON/CSV files under --out."""
    method_values = command_values(locals(), method_flags)
    from ..data.inputs import shown
    from ..data.outputs import check_folder
    from ..evaluation.benchmark import markdown_table, run_benchmark

    check_folder(out, "--out")  # a file or a read-only folder is found now, not after the first class
    earlier = [p for p in (out / "results.json", out / "classes") if p.exists()]
    if earlier and not (resume or overwrite):  # an earlier evaluation is never replaced silently
        raise UsageError(f"--out {shown(out)}: holds an earlier evaluation ({earlier[0].name}); pass --resume to keep "
                         f"its finished classes or --overwrite to replace it")
    try:
        shot_list = sorted({int(s) for s in shots.split(",") if s.strip()})
    except ValueError:
        raise UsageError(f"--shots {shots!r}: expected comma-separated integers like 0,1,2,4") from None
    spec = scorer_spec(ctx, method, "object", model, pretrained, device, precision, method_values, map_size=eval_size)

    @contextlib.contextmanager
    def class_progress(name: str, total: int):
        bar = progress_bar(total, quiet)
        if bar is None:
            yield None
            return
        task = bar.add_task(name, total=total)
        bar.start()
        try:
            yield lambda: bar.update(task, advance=1)
        finally:
            bar.stop()

    report = run_benchmark(spec, root, dataset=dataset, classes=split_list(classes), shots=shot_list, seeds=seeds,
                           out=out, eval_size=eval_size, split_csv=split_csv, save_maps=save_maps,
                           save_overlays=save_overlays, resume=resume, batch_size=batch_size, cache_dir=cache_dir,
                           log=lambda m: log(quiet, m), progress=class_progress,
                           calibration_images=calibration_images, false_alarm_rate=false_alarm_rate)
    print(markdown_table(report["summary"]))
    log(quiet, f"wrote {out / 'results.json'}, {out / 'results.csv'}, {out / 'per_image.csv'}")
