"""`fade bank build|info`: save good reference images' patch embeddings once, inspect a saved bank."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..data.inputs import scan_inputs, shown
from ..data.io import DEFAULT_MAX_PIXELS, load_image
from ..data.outputs import check_file_destination
from ..decisions.calibration import NormalScores
from ..errors import ImageError, UsageError
from ..methods import DEFAULT_METHOD
from ..model.backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .common import (
    CacheOpt, ClassOpt, DeviceOpt, ImagesArg, MaxPixelsOpt, MethodOpt, ModelOpt, NoCacheOpt, PrecisionOpt,
    PretrainedOpt, QuietOpt, ScalesOpt, SeedOpt, ShotsOpt, VerboseOpt, command_values, log, parse_scales,
    report_skipped, scorer_spec, with_method_flags,
)



bank_app = typer.Typer(help="Build and inspect saved reference banks (few-shot memory banks).", no_args_is_help=True)


@bank_app.command("build")
@with_method_flags(exclude=("vision_feature",))  # its --feature names the bank's patches
def bank_build(
    ctx: typer.Context,
    images: ImagesArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Bank file to write (e.g. bottle.fadebank).")],
    class_name: ClassOpt = "object",
    shots: ShotsOpt = None,
    shots_seed: SeedOpt = 0,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    scales: ScalesOpt = "240,448,896",
    feature: Annotated[Optional[str], typer.Option("--feature", help="Patch features stored: clip or gem. Default: the method's few-shot vision feature (clip).", show_default=False)] = None,
    calibrate: Annotated[bool, typer.Option("--calibrate/--no-calibrate", help="Also score each reference against the others with the method and settings given (leave-one-out) and store those normal scores, for --threshold auto.")] = True,
    method: MethodOpt = DEFAULT_METHOD,
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bank file.")] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    **method_flags,
) -> None:
    """Embed good reference images once and save them; reuse with `--bank FILE`.

    The bank stores each scale's patch embeddings and the model, weights fingerprint,
    scales, feature kind and fade version; it is read without pickle. With 2 or more images it
    also calibrates: each reference is scored against a bank of the others with the method and
    settings given here (use the same ones with --bank), and the bank keeps those normal
    scores for `--threshold auto` (docs/calibration.md). With --method dino it holds DINOv2
    patch tokens and records the DINOv2 backbone and its weights' fingerprint."""
    method_values = command_values(locals(), method_flags)
    method_values["vision_feature"] = feature  # the bank's patches are the few-shot vision feature
    from dataclasses import replace

    from ..decisions.normals import leave_one_out
    from ..engines.runner import build_pipeline, load_spec_backbone
    from ..methods import get_method
    from ..prompts.text import TextEncoderCache
    from .calibrate import describe

    if feature is not None and feature not in ("clip", "gem"):
        raise UsageError(f"--feature {feature}: expected clip or gem")
    check_file_destination(output, "--output")
    if os.path.lexists(output) and not overwrite:
        raise UsageError(f"--output {shown(output)}: exists already; pass --overwrite to replace it")
    scanned = scan_inputs(images)
    report_skipped(scanned, verbose)
    items = scanned.items
    bad = [i for i in items if i.error]
    if bad:
        raise UsageError(f"{bad[0].path}: {bad[0].error}")
    paths = sorted(i.path for i in items)
    if shots is not None:
        from ..data.datasets import sample_reference_indices

        if shots > len(paths):
            raise UsageError(f"--shots {shots}: only {len(paths)} reference images given")
        paths = [paths[i] for i in sample_reference_indices(len(paths), shots, shots_seed)]
    if feature is not None and "vision_feature" not in get_method(method).flags:
        raise UsageError(f"--feature does not apply to --method {method} (its bank holds the patches it needs)")
    spec = scorer_spec(ctx, method, class_name, model, pretrained, device, precision, method_values)
    loaded = []
    for p in paths:
        try:
            loaded.append(load_image(p, max_pixels))
        except ImageError as exc:
            raise UsageError(f"{p}: {exc}") from None
    own_layout = getattr(get_method(method), "bank_layout", None)  # a method with its own vision backbone
    if own_layout is not None and not (calibrate and len(loaded) >= 2):
        # nothing to score: the bank is built without loading the CLIP model
        layout = own_layout(spec.options, device, precision)
        result = layout.embed(None, loaded, meta={"class": class_name, "images": [str(p) for p in paths]})
        result.save(output)
        log(quiet, f"wrote {output}: {len(paths)} image(s), {result.meta.get('model')} {layout.feature} patches "
                   f"at {', '.join(map(str, layout.scales))} px")
        return
    backbone = load_spec_backbone(spec)
    cache = TextEncoderCache(backbone, cache_dir, enabled=not no_cache)
    pipeline = build_pipeline(spec, backbone, text_cache=cache, few_shot=True)
    layout = pipeline.bank_layout
    clip_patches = layout.feature in ("clip", "gem")  # CLIP patches: plus every --scales scale, as banks always held
    if clip_patches:
        layout = replace(layout, scales=tuple(sorted(set(layout.scales) | set(parse_scales(scales)))))
    for s in layout.scales if clip_patches else ():
        backbone.check_scale(s)
    result = layout.embed(backbone, loaded, meta={"class": class_name, "pretrained": pretrained,
                                                   "images": [str(p) for p in paths]})
    calibration = None
    if calibrate and len(loaded) >= 2:
        pipeline.use_reference_bank(result)
        log(quiet, f"calibrating: each of the {len(loaded)} references scored against the others ({pipeline.method_label})")
        calibration = leave_one_out(pipeline, loaded, paths, class_name)
        calibration.store_in(result)
    elif calibrate:
        log(quiet, "one reference image: no leave-one-out normal scores (--threshold auto needs 2 or more)")
    result.save(output)
    log(quiet, f"wrote {output}: {len(paths)} image(s), scales {', '.join(map(str, layout.scales))}, {layout.feature} patches")
    if calibration is not None:
        describe(calibration, quiet)


@bank_app.command("info")
def bank_info(bank: Annotated[Path, typer.Argument(help="A bank file from `fade bank build`.")]) -> None:
    """Print a bank's metadata and patch counts as JSON."""
    from ..methods.memory import MemoryBank

    loaded = MemoryBank.load(bank)
    info = {k: v for k, v in loaded.meta.items() if k != "images"}
    info["patches"] = {str(s): list(t.shape) for s, t in sorted(loaded.patches.items())}
    if loaded.arrays:
        info["arrays"] = {name: list(t.shape) for name, t in sorted(loaded.arrays.items())}
    info["images"] = loaded.meta.get("images", [])
    cal = NormalScores.of_bank(loaded)
    if cal is not None:
        info["calibration"] = {"how": cal.meta.get("how"), "method": cal.meta.get("settings", {}).get("method"),
                               "image_scores": len(cal.image),
                               "pixel_scores": None if cal.pixels is None else list(cal.pixels.shape),
                               "threshold_at_1_percent": cal.image_threshold(0.01).as_dict()}
    print(json.dumps(info, indent=2))
