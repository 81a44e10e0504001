"""`fade detect` and `fade segment`: parse the flags, build the method's pipeline, stream rows (local or Ray engine)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ..data.inputs import scan_inputs, shown
from ..data.io import DEFAULT_MAX_PIXELS, Manifest, atomic_write, load_image
from ..data.outputs import common_base, prepare_writes
from ..decisions.formats import row_writer
from ..errors import ImageError, UsageError
from ..methods import DEFAULT_METHOD
from ..model.backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .common import (
    ActorsOpt, BankOpt, BatchOpt, CacheOpt, ClassOpt, DeviceOpt, EngineOpt, Failures, ImagesArg, ManifestOpt,
    MaxPixelsOpt, MethodOpt, ModelOpt, NoCacheOpt, OverwriteOpt, PrecisionOpt, PretrainedOpt, QuietOpt,
    RayAddressOpt, RefsOpt, ResumeOpt, ScalesOpt, SeedOpt, ShotsOpt, ThresholdOpt, VerboseOpt, checked_number,
    command_values, log, progress_bar, reference_paths, refuse_references, report_skipped, scorer_spec,
    with_method_flags,
)
from .decide import (
    PIXEL_THRESHOLD_HELP, CalibrationOpt, FalseAlarmOpt, FormatOpt, MinRegionOpt, NormalisedOpt, check_decision_flags,
    check_format, resolve_thresholds,
)


def _run(ctx, **options) -> int:
    """`_score`, with the destinations it locks released at the end whatever happens."""
    with contextlib.ExitStack() as held:
        return _score(ctx, held=held, **options)


def _score(
    ctx,
    *,
    held: contextlib.ExitStack,
    images: list[str],
    class_name: str,
    refs: list[str] | None,
    bank: Path | None,
    shots: int | None,
    shots_seed: int,
    model: str,
    pretrained: str,
    device: str,
    precision: str,
    threshold: str,
    batch_size: int,
    cache_dir: Path | None,
    no_cache: bool,
    max_pixels: int,
    quiet: bool,
    out: Path | None = None,
    pixel_threshold: str = "0.5",
    resume: bool = False,
    manifest: Path | None = None,
    method: str = DEFAULT_METHOD,
    engine: str = "local",
    ray_address: str | None = None,
    actors: int | None = None,
    verbose: bool = False,
    overwrite: bool = False,
    false_alarm_rate: float | None = None,
    calibration: Path | None = None,
    normalised_score: bool = False,
    min_region_area: int = 1,
    output_format: str = "jsonl",
    **method_values,
) -> int:
    """detect / segment: inputs -> rows on stdout (and files under `out`); the exit status."""
    from ..engines.runner import OUTPUT_SUFFIXES, OutputSpec, build_pipeline, load_spec_backbone, score_paths
    from ..prompts.text import TextEncoderCache

    # validation only (nan, inf, outside [0, 1]): each value keeps its type, so a flag that also
    # takes the word auto (calibrated thresholds) passes through unchanged
    checked_number(threshold, "--threshold", 0.0, 1.0, allow_auto=True)
    if out is not None:
        checked_number(pixel_threshold, "--pixel-threshold", 0.0, 1.0, allow_auto=True)
    if engine not in ("local", "ray"):
        raise UsageError(f"--engine {engine}: expected local or ray")
    if engine == "ray":
        from ..engines.ray import require_ray

        require_ray()  # before any work: without the extra, one line saying how to install it
    elif ray_address is not None or actors is not None:
        raise UsageError("--ray-address and --actors need --engine ray")
    check_format(output_format)
    check_decision_flags(threshold, pixel_threshold if out is not None else None, false_alarm_rate, calibration,
                         normalised_score)
    scanned = scan_inputs(images, exclude=[out] if out is not None else ())
    items = scanned.items
    if not items:
        raise UsageError("no input images given")
    report_skipped(scanned, verbose)
    todo = [i.path for i in items if not i.error]
    refuse_references(method, refs=refs, bank=bank, shots=shots)  # zero-shot-only methods, before reading refs
    ref_paths = reference_paths(refs, shots, shots_seed, items, verbose) if refs else []
    ref_images = []
    if bank is not None and refs:
        raise UsageError("give either --refs or --bank, not both")

    spec = scorer_spec(ctx, method, class_name, model, pretrained, device, precision, method_values)
    if manifest is None and out is not None:
        manifest = out / "manifest.jsonl"
    if resume and manifest is None:
        raise UsageError("--resume needs --manifest FILE (or --out for segment)")
    # destinations checked, output names planned and locked before the model loads (data/outputs.py)
    stems, unwritable = prepare_writes(held, todo, out, manifest, OUTPUT_SUFFIXES, overwrite, resume)
    failures = Failures()  # per-input problems, reported once nothing refuses the whole run
    for item in items:
        if item.error:
            failures.report(item.path, item.error)
    for p in todo:
        if p in unwritable:
            failures.report(p, unwritable[p])
    todo = [p for p in todo if p not in unwritable]

    t0 = time.perf_counter()
    backbone = load_spec_backbone(spec)
    log(quiet, f"loaded {spec.model} ({pretrained}) on {backbone.device}")
    # the one text cache of the run; with --engine ray it travels to the actors, memo included
    cache = TextEncoderCache(backbone, cache_dir, enabled=not no_cache)
    pipeline = build_pipeline(spec, backbone, text_cache=cache, few_shot=bool(ref_paths) or bank is not None)
    reference_bank = None
    if bank is not None:
        from ..methods.memory import MemoryBank

        reference_bank = MemoryBank.load(bank)
        log(quiet, f"reference bank {bank}: {reference_bank.meta.get('n_images')} image(s), class {reference_bank.meta.get('class')}")
    if ref_paths:
        log(quiet, f"embedding {len(ref_paths)} reference image(s) at {', '.join(map(str, pipeline.bank_layout.scales))} px")
        for p in ref_paths:
            try:
                ref_images.append(load_image(p, max_pixels))
            except ImageError as exc:
                raise UsageError(f"reference {p}: {exc}") from None
        reference_bank = pipeline.embed_references(ref_images, meta={"class": class_name, "images": [str(p) for p in ref_paths]})
    if reference_bank is not None:
        pipeline.use_reference_bank(reference_bank)
    if bank is not None and not reference_bank.has_fingerprint:
        print(f"fade: note: {shown(bank)} has no weights fingerprint (written by an older fade), so only a partial weights "
              f"id was checked; rebuild it with `fade bank build` to have the weights checked in full", file=sys.stderr)
    log(quiet, f"ready in {time.perf_counter() - t0:.1f} s ({pipeline.method_label}, "
                f"{'%s-shot' % reference_bank.meta.get('n_images') if reference_bank else 'zero-shot'}, "
                f"prompts {', '.join(pipeline.banks)}; text cache {cache.hits} hit(s), {cache.misses} miss(es))")

    decided = resolve_thresholds(threshold=threshold, pixel_threshold=pixel_threshold if out is not None else None,
                                 false_alarm_rate=false_alarm_rate, calibration=calibration, normalised=normalised_score,
                                 bank_path=bank, pipeline=pipeline, ref_images=ref_images, ref_paths=ref_paths,
                                 class_name=class_name, quiet=quiet)
    output = OutputSpec(base=common_base(todo) if todo else Path.cwd(), out=out, max_pixels=max_pixels,
                        shots=int(reference_bank.meta.get("n_images", 0)) if reference_bank else 0,
                        min_region_area=min_region_area, stems=stems, **decided)
    threshold, pixel_threshold = output.threshold, output.pixel_threshold
    record = None
    settings = None
    finished: dict[str, dict] = {}
    if manifest is not None:
        settings = {"model": backbone.model_name, "weights": backbone.weights_id, "method": pipeline.method_label,
                    "config": pipeline.config.as_dict(), "class": class_name, "banks": pipeline.banks,
                    "threshold": threshold, "pixel_threshold": pixel_threshold if out is not None else None,
                    "out": str(out) if out else None,
                    **({"min_region_area": min_region_area} if min_region_area != 1 else {}),
                    **({"normalised_score": True} if normalised_score else {}),
                    "references": reference_bank.meta.get("images") if reference_bank else None}
        record = Manifest(manifest, hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16])
        finished = record.finished() if resume else {}
        if overwrite and not resume:
            record.restart()
    already = {p for p in todo if str(p.absolute()) in finished}
    if already:
        log(quiet, f"resuming: {len(already)} image(s) already finished, {len(todo) - len(already)} to do")
    writer = row_writer(output_format, sys.stdout, segment=out is not None)
    progress = progress_bar(len(todo), quiet)
    task = progress.add_task("scoring", total=len(todo)) if progress else None
    pending = [p for p in todo if p not in already]
    if pipeline.scores_whole_batch:  # MuSc: subsets of all inputs, each scored as a whole (engines/subsets.py)
        from ..engines.subsets import score_subsets

        if engine == "ray":
            from ..engines.ray_subsets import run_ray_subsets

            results = run_ray_subsets(spec, output, todo, pipeline.options.subset_size, batch_size=batch_size,
                                      actors=actors, address=ray_address, text_cache=cache, done=already,
                                      log=lambda m: log(quiet, m), quiet=quiet)
        else:
            results = score_subsets(pipeline, todo, spec, output, batch_size, done=already)
    elif engine == "ray":  # same outcomes, same order, scored by Ray Data actors (fade_cli/engines/ray.py)
        from ..engines.ray import run_ray

        results = run_ray(spec, output, reference_bank, pending, batch_size=batch_size, actors=actors,
                          address=ray_address, text_cache=cache, log=lambda m: log(quiet, m), quiet=quiet)
    else:
        results = score_paths(pipeline, pending, spec, output, batch_size)
    if progress:
        progress.start()
    try:
        for p in todo:  # rows in input order, finished ones included
            if p in already:
                row = finished[str(p.absolute())]
                writer.write({k: v for k, v in row.items() if k not in ("input", "settings")})
            else:
                outcome = next(results)
                assert outcome.path == p, (outcome.path, p)
                if outcome.error is not None:
                    failures.report(p, outcome.error)
                else:
                    if record is not None:
                        record.append(outcome.row, p)
                    writer.write(outcome.row)
            if progress:
                progress.update(task, advance=1)
    finally:
        results.close()  # --engine ray: stops the job and a Ray instance it started
        if progress:
            progress.stop()
        if out is not None:  # what `fade report` shows beside the manifest: settings, failed inputs
            run_record = json.dumps({"settings": settings, "fingerprint": record.fingerprint if record else None,
                                     "cwd": str(Path.cwd()), "images": len(items), "failures": failures.lines},
                                    indent=1, default=str).encode()
            atomic_write(out / "run.json", lambda fh: fh.write(run_record))
    ok = len(items) - failures.count
    log(quiet, f"{ok} ok, {failures.count} failed")
    return 1 if failures.count else 0


@with_method_flags()
def detect(
    ctx: typer.Context,
    images: ImagesArg,
    class_name: ClassOpt = "object",
    refs: RefsOpt = None,
    bank: BankOpt = None,
    shots: ShotsOpt = None,
    shots_seed: SeedOpt = 0,
    threshold: ThresholdOpt = "0.5",
    false_alarm_rate: FalseAlarmOpt = None,
    calibration: CalibrationOpt = None,
    normalised_score: NormalisedOpt = False,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    scales: ScalesOpt = "240,448,896",
    method: MethodOpt = DEFAULT_METHOD,
    batch_size: BatchOpt = 1,
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    resume: ResumeOpt = False,
    manifest: ManifestOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    overwrite: OverwriteOpt = False,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    actors: ActorsOpt = None,
    output_format: FormatOpt = "jsonl",
    **method_flags,
) -> None:
    """Score images: one JSON line per image on stdout (path, class, score, anomalous, threshold, ms)."""
    raise typer.Exit(_run(ctx, **command_values(locals(), method_flags)))


@with_method_flags()
def segment(
    ctx: typer.Context,
    images: ImagesArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder; the input tree is mirrored under it.")],
    class_name: ClassOpt = "object",
    refs: RefsOpt = None,
    bank: BankOpt = None,
    shots: ShotsOpt = None,
    shots_seed: SeedOpt = 0,
    threshold: ThresholdOpt = "0.5",
    pixel_threshold: Annotated[str, typer.Option("--pixel-threshold", metavar="T|auto", help=PIXEL_THRESHOLD_HELP)] = "0.5",
    false_alarm_rate: FalseAlarmOpt = None,
    calibration: CalibrationOpt = None,
    normalised_score: NormalisedOpt = False,
    min_region_area: MinRegionOpt = 1,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    scales: ScalesOpt = "240,448,896",
    method: MethodOpt = DEFAULT_METHOD,
    batch_size: BatchOpt = 1,
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    resume: ResumeOpt = False,
    manifest: ManifestOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    overwrite: OverwriteOpt = False,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    actors: ActorsOpt = None,
    output_format: FormatOpt = "jsonl",
    **method_flags,
) -> None:
    """Score and segment images. Per image, under --out: NAME.overlay.png (heatmap over the image),
    NAME.map.npy (float32 anomaly map at the image's size, values in [0, 1]) and NAME.mask.png
    (pixels with map >= --pixel-threshold). One JSON line per image on stdout."""
    raise typer.Exit(_run(ctx, **command_values(locals(), method_flags)))
