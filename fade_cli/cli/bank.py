"""`fade bank build|info`: save good reference images' patch embeddings once, inspect a saved bank."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from ..data.inputs import scan_inputs, shown
from ..data.io import DEFAULT_MAX_PIXELS, load_image
from ..data.outputs import check_file_destination
from ..errors import ImageError, UsageError
from ..model.backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .common import (
    ClassOpt, DeviceOpt, ImagesArg, MaxPixelsOpt, ModelOpt, PrecisionOpt, PretrainedOpt, QuietOpt, ScalesOpt,
    SeedOpt, ShotsOpt, VerboseOpt, log, parse_scales, report_skipped, resolve_model_name,
)


bank_app = typer.Typer(help="Build and inspect saved reference banks (few-shot memory banks).", no_args_is_help=True)


@bank_app.command("build")
def bank_build(
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
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bank file.")] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Embed good reference images once and save them; reuse with `--bank FILE`.

    The bank stores each scale's patch embeddings and the model, weights fingerprint,
    scales, feature kind and fade version; it is read without pickle."""
    from ..model.backbone import load_backbone
    from ..methods.base import build_reference_bank

    if feature not in ("clip", "gem"):
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
    loaded = []
    for p in paths:
        try:
            loaded.append(load_image(p, max_pixels))
        except ImageError as exc:
            raise UsageError(f"{p}: {exc}") from None
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
    info["images"] = loaded.meta.get("images", [])
    print(json.dumps(info, indent=2))
