"""`fade bank build|info`: save good reference images' patch embeddings once, inspect a saved bank."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..data.io import DEFAULT_MAX_PIXELS, expand_inputs, load_image
from ..errors import ImageError, UsageError
from ..model.backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED
from ..methods import DEFAULT_METHOD
from .common import (
    AugmentRefsOpt, ClassOpt, DeviceOpt, ImagesArg, MaxPixelsOpt, MethodOpt, ModelOpt, PrecisionOpt, PretrainedOpt,
    QuietOpt, ScalesOpt, SeedOpt, ShotsOpt, VisionBackboneOpt, VisionPretrainedOpt, VisionSizeOpt, log, parse_scales,
    resolve_model_name, scorer_spec,
)


DINO_BANK_FLAGS = ("vision_backbone", "vision_pretrained", "vision_size", "augment_refs")

bank_app = typer.Typer(help="Build and inspect saved reference banks (few-shot memory banks).", no_args_is_help=True)


@bank_app.command("build")
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
    feature: Annotated[str, typer.Option("--feature", help="Patch features stored: clip (FADE few-shot) or gem.")] = "clip",
    method: MethodOpt = DEFAULT_METHOD,
    vision_backbone: VisionBackboneOpt = None,
    vision_pretrained: VisionPretrainedOpt = None,
    vision_size: VisionSizeOpt = None,
    augment_refs: AugmentRefsOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    quiet: QuietOpt = False,
) -> None:
    """Embed good reference images once and save them; reuse with `--bank FILE`.

    The bank stores each scale's patch embeddings and the model, weights fingerprint,
    scales, feature kind and fade version; it is read without pickle. With --method dino it
    holds DINOv2 patch tokens and records the DINOv2 backbone and its weights' fingerprint."""
    from ..methods import get_method
    from ..model.backbone import load_backbone
    from ..methods.base import build_reference_bank

    values = dict(locals())
    entry = get_method(method)
    # a method with its own vision backbone builds its bank without a pipeline (no prompts encoded)
    own_layout = getattr(entry, "bank_layout", None)
    given = [p for p in ctx.command.params if getattr(ctx.get_parameter_source(p.name), "name", None) == "COMMANDLINE"]
    for param in given:  # the flags of the other kind of bank
        if (param.name == "feature" and own_layout is not None) or (param.name in DINO_BANK_FLAGS and own_layout is None):
            raise UsageError(f"{max(param.opts, key=len)} does not apply to --method {entry.name}")
    if feature not in ("clip", "gem"):
        raise UsageError(f"--feature {feature}: expected clip or gem")
    items = expand_inputs(images)
    bad = [i for i in items if i.error]
    if bad:
        raise UsageError(f"{bad[0].path}: {bad[0].error}")
    paths = sorted(i.path for i in items)
    if shots is not None:
        from ..data.datasets import sample_reference_indices

        if shots > len(paths):
            raise UsageError(f"--shots {shots}: only {len(paths)} reference images given")
        paths = [paths[i] for i in sample_reference_indices(len(paths), shots, shots_seed)]
    loaded = []
    for p in paths:
        try:
            loaded.append(load_image(p, max_pixels))
        except ImageError as exc:
            raise UsageError(f"{p}: {exc}") from None
    if own_layout is not None:
        spec = scorer_spec(ctx, method, class_name, model, pretrained, device, precision, values)
        layout = own_layout(spec.options, device, precision)
        result = layout.embed(None, loaded, meta={"class": class_name, "images": [str(p) for p in paths]})
        result.save(output)
        log(quiet, f"wrote {output}: {len(paths)} image(s), {result.meta.get('model')} {layout.feature} patches "
                   f"at {', '.join(map(str, layout.scales))} px")
        return
    backbone = load_backbone(resolve_model_name(model), pretrained, device, precision)
    seg_scales = parse_scales(scales)
    for s in seg_scales:
        backbone.check_scale(s)
    result = build_reference_bank(backbone, loaded, seg_scales, feature,
                                  meta={"class": class_name, "pretrained": pretrained, "images": [str(p) for p in paths]})
    result.save(output)
    log(quiet, f"wrote {output}: {len(paths)} image(s), scales {', '.join(map(str, seg_scales))}, {feature} patches")


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
    print(json.dumps(info, indent=2))
