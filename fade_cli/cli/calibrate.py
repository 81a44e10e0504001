"""`fade calibrate`: score good images with a method and its settings and save their normal
scores (JSON) for `--threshold auto --calibration FILE` (docs/calibration.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from ..data.inputs import scan_inputs
from ..data.io import DEFAULT_MAX_PIXELS, atomic_write, load_image
from ..decisions.calibration import DEFAULT_FALSE_ALARM_RATE
from ..errors import ImageError, UsageError
from ..methods import DEFAULT_METHOD
from ..model.backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .common import (
    BankOpt, BatchOpt, CacheOpt, ClassOpt, DeviceOpt, Failures, ImagesArg, MaxPixelsOpt, MethodOpt, ModelOpt,
    NoCacheOpt, PrecisionOpt, PretrainedOpt, QuietOpt, RefsOpt, ScalesOpt, SeedOpt, ShotsOpt, command_values, log,
    reference_paths, report_skipped, scorer_spec, with_method_flags,
)


def load_images(paths: list[Path], max_pixels: int, what: str) -> list:
    """Reference-like inputs must all load: one bad file is a set-up error (exit 2)."""
    loaded = []
    for p in paths:
        try:
            loaded.append(load_image(p, max_pixels))
        except ImageError as exc:
            raise UsageError(f"{what} {p}: {exc}") from None
    return loaded


def describe(scores, quiet: bool, rate: float = DEFAULT_FALSE_ALARM_RATE) -> None:
    """One log line: the image threshold these scores give at the default rate (the run that
    uses a threshold warns if it is extrapolated; saving scores does not)."""
    t = scores.image_threshold(rate)
    log(quiet, f"{len(scores.image)} normal image scores ({scores.meta.get('how')}); at a false-alarm rate of {rate:g} "
               f"the threshold would be {t.value:.4f} ({t.estimator}{', extrapolated' if t.extrapolated else ''}; "
               f"{t.interval[0]:.2g} to {t.interval[1]:.2g} expected)")


@with_method_flags()
def calibrate_command(
    ctx: typer.Context,
    images: ImagesArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Calibration file to write (JSON; docs/calibration.md).")],
    class_name: ClassOpt = "object",
    refs: RefsOpt = None,
    bank: BankOpt = None,
    shots: ShotsOpt = None,
    shots_seed: SeedOpt = 0,
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
    quiet: QuietOpt = False,
    **method_flags,
) -> None:
    """Score good images (that no reference bank holds) with a method and its settings, and
    write their image scores and a sample of their pixel scores to a JSON file: the normal
    scores `--threshold auto --calibration FILE` calibrates from. Zero-shot by default; with
    --refs or --bank, held-out scores against those references."""
    method_values = command_values(locals(), method_flags)
    from ..decisions.normals import score_normals
    from ..engines.runner import build_pipeline, load_spec_backbone
    from ..prompts.text import TextEncoderCache

    scanned = scan_inputs(images)
    report_skipped(scanned, verbose=False)  # the count of skipped files, always (docs/limits.md)
    items = scanned.items
    failures = Failures()
    for item in items:
        if item.error:
            failures.report(item.path, item.error)
    good = [i.path for i in items if not i.error]
    if bank is not None and refs:
        raise UsageError("give either --refs or --bank, not both")
    ref_paths = reference_paths(refs, shots, shots_seed, items) if refs else []
    spec = scorer_spec(ctx, method, class_name, model, pretrained, device, precision, method_values)
    t0 = time.perf_counter()
    backbone = load_spec_backbone(spec)
    cache = TextEncoderCache(backbone, cache_dir, enabled=not no_cache)
    pipeline = build_pipeline(spec, backbone, text_cache=cache, few_shot=bool(ref_paths) or bank is not None)
    reference_bank = None
    if bank is not None:
        from ..methods.memory import MemoryBank

        reference_bank = MemoryBank.load(bank)
        held = {Path(p).absolute() for p in reference_bank.meta.get("images", [])}
    else:
        held = {p.absolute() for p in ref_paths}
    if ref_paths:
        reference_bank = pipeline.embed_references(load_images(ref_paths, max_pixels, "reference"),
                                                   meta={"class": class_name, "images": [str(p) for p in ref_paths]})
    overlap = [p for p in good if p.absolute() in held]
    if overlap:  # scored against a bank holding itself, a good image looks far too normal
        raise UsageError(f"{overlap[0]}: is one of the references; calibrate with other good images "
                         "(or let `fade bank build` calibrate by leave-one-out)")
    if reference_bank is not None:
        pipeline.use_reference_bank(reference_bank)
    loaded, paths = [], []
    for p in good:
        try:
            loaded.append(load_image(p, max_pixels))
            paths.append(p)
        except ImageError as exc:
            failures.report(p, str(exc))
    if len(loaded) < 2:
        raise UsageError(f"{len(loaded)} readable good image(s): calibration needs at least 2")
    log(quiet, f"scoring {len(loaded)} good image(s) ({pipeline.method_label}, "
               f"{'%s-shot' % reference_bank.meta.get('n_images') if reference_bank else 'zero-shot'})")
    scores = score_normals(pipeline, loaded, paths, class_name, batch_size=batch_size)
    atomic_write(output, lambda fh: fh.write(json.dumps(scores.to_json()).encode()))
    log(quiet, f"wrote {output} in {time.perf_counter() - t0:.1f} s")
    describe(scores, quiet)
    raise typer.Exit(1 if failures.count else 0)
