"""`fade explain`: the prompts that match one image best, and whether the method's scoring kept them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..data.io import DEFAULT_MAX_PIXELS, load_image
from ..errors import ImageError, UsageError
from ..methods import DEFAULT_METHOD
from ..model.backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .common import CacheOpt, ClassOpt, ClsScaleOpt, DeviceOpt, MaxPixelsOpt, MethodOpt, ModelOpt, PretrainedOpt, QuietOpt


def explain(
    ctx: typer.Context,
    image: Annotated[Path, typer.Argument(help="The image to explain.")],
    class_name: ClassOpt = "object",
    banks: Annotated[Optional[list[str]], typer.Option("--prompts", help="The method's image-level prompt banks (as --cls-prompts). Default: the method's (winclip for fade and filo, alfa for alfa).", show_default=False)] = None,
    method: MethodOpt = DEFAULT_METHOD,
    top: Annotated[int, typer.Option("--top", min=1, help="How many descriptions per state.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout instead of a table.")] = False,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    scale: ClsScaleOpt = 240,
    cache_dir: CacheOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    quiet: QuietOpt = False,
) -> None:
    """The image-level prompt descriptions that match an image best (cosine of the CLIP image
    embedding with each prompt) and whether the method's scoring keeps each one for this image
    (FADE keeps all; ALFA's run-time prompt adaptation filters, shown with each contextual score)."""
    del quiet  # nothing is logged
    from ..engines.runner import build_pipeline, load_spec_backbone
    from ..prompts.text import TextEncoderCache
    from .common import scorer_spec

    try:
        img = load_image(image, max_pixels)
    except ImageError as exc:
        raise UsageError(f"{image}: {exc}") from None
    spec = scorer_spec(ctx, method, class_name, model, pretrained, device, "fp32",
                       {"cls_prompts": banks, "cls_scale": scale})
    backbone = load_spec_backbone(spec)
    pipeline = build_pipeline(spec, backbone, text_cache=TextEncoderCache(backbone, cache_dir))
    report = pipeline.explain([img])[0]  # the pipeline's own decision, as its scoring makes it
    ranked = {}
    for state in ("anomalous", "normal"):
        entries = sorted(report[state], key=lambda e: -e["similarity"])[:top]
        ranked[state] = [{k: round(v, 6) if isinstance(v, float) else v for k, v in e.items()} for e in entries]
    result = {"path": str(image), "class": class_name, "method": pipeline.method_label, "banks": report["banks"], **ranked,
              "kept": {state: sum(e["kept"] for e in report[state]) for state in ("normal", "anomalous")},
              "prompts": {state: len(report[state]) for state in ("normal", "anomalous")}}
    if as_json:
        print(json.dumps(result))
        return
    from rich.table import Table

    extra = [k for k in (ranked["anomalous"] or ranked["normal"])[0] if k not in ("text", "similarity", "kept")]
    table = Table("state", "similarity", *(k.replace("_", " ") for k in extra), "kept", "description",
                  title=f"{image} ({class_name}, {pipeline.method_label})")
    for state in ("anomalous", "normal"):
        for r in ranked[state]:
            table.add_row(state, f"{r['similarity']:.4f}", *(f"{r[k]:.4f}" for k in extra), "yes" if r["kept"] else "no",
                          r["text"])
    Console().print(table)
