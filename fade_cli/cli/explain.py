"""`fade explain`: the prompt descriptions that match one image best."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..data.io import DEFAULT_MAX_PIXELS, load_image
from ..errors import ImageError, UsageError
from ..model.backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .common import (
    CacheOpt, ClassOpt, ClsScaleOpt, DeviceOpt, MaxPixelsOpt, ModelOpt, PretrainedOpt, QuietOpt, resolve_model_name,
    split_list,
)


def explain(
    image: Annotated[Path, typer.Argument(help="The image to explain.")],
    class_name: ClassOpt = "object",
    banks: Annotated[Optional[list[str]], typer.Option("--prompts", help="Banks whose descriptions are ranked. Default: winclip,fade-llm (fade) or alfa (alfa).", show_default=False)] = None,
    method: Annotated[str, typer.Option("--method", help="fade: rank by similarity; alfa: also the contextual score of each description and whether run-time prompt adaptation keeps it.")] = "fade",
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
    """The prompt descriptions that match an image best (cosine of the CLIP image embedding with
    each prompt); with --method alfa, also each one's contextual score (ALFA eq. 4) and whether
    run-time prompt adaptation keeps it for this image."""
    from ..model.backbone import load_backbone, preprocess_batch
    from ..prompts.text import DEFAULT_FRAME, TextEncoderCache
    from ..prompts.banks import load_bank

    if method not in ("fade", "alfa"):
        raise UsageError(f"--method {method}: explain supports fade and alfa")
    try:
        img = load_image(image, max_pixels)
    except ImageError as exc:
        raise UsageError(f"{image}: {exc}") from None
    default_banks = ("alfa",) if method == "alfa" else ("winclip", "fade-llm")
    loaded = [load_bank(b) for b in (split_list(banks) or default_banks)]
    backbone = load_backbone(resolve_model_name(model), pretrained, device)
    if method == "alfa":
        from ..methods.alfa import ALFA_FRAME as frame
    else:
        frame = DEFAULT_FRAME
    cache = TextEncoderCache(backbone, cache_dir, frame=frame)
    emb = backbone.encode_images(preprocess_batch([img], scale), want_clip=False, want_gem=False).cls[0].cpu()
    texts = {state: list(dict.fromkeys(t for b in loaded for t in b.texts(state, class_name))) for state in ("normal", "anomalous")}
    sims = {state: cache.encode(texts[state]) @ emb for state in texts}
    context = None
    if method == "alfa":
        from ..methods.rtp import contextual_scores

        both = contextual_scores(sims["normal"][None], sims["anomalous"][None])[0]
        context = {"normal": both[: len(texts["normal"])].tolist(), "anomalous": both[len(texts["normal"]):].tolist()}
    ranked = {}
    for state in ("anomalous", "normal"):
        values = sims[state].tolist()
        order = sorted(range(len(values)), key=lambda i: -values[i])[:top]
        ranked[state] = [{"text": texts[state][i], "similarity": round(values[i], 6)} for i in order]
        if context is not None:
            for entry, i in zip(ranked[state], order):
                entry["contextual_score"] = round(context[state][i], 6)
                entry["kept"] = context[state][i] > 0
    result = {"path": str(image), "class": class_name, "method": method, "banks": [b.label for b in loaded], **ranked}
    if context is not None:
        result["kept"] = {state: sum(v > 0 for v in context[state]) for state in context}
        result["prompts"] = {state: len(texts[state]) for state in texts}
    if as_json:
        print(json.dumps(result))
        return
    from rich.table import Table

    columns = ("state", "similarity", "context", "kept", "description") if context else ("state", "similarity", "description")
    table = Table(*columns, title=f"{image} ({class_name})")
    for state in ("anomalous", "normal"):
        for r in ranked[state]:
            extra = (f"{r['contextual_score']:.4f}", "yes" if r["kept"] else "no") if context else ()
            table.add_row(state, f"{r['similarity']:.4f}", *extra, r["text"])
    Console().print(table)
