"""MuSc as a method of this CLI: the embedding pass, subsets, and the fusion with FADE's language.

A batch method: an image's score depends on the other images it is scored with. The inputs
are cut into subsets (`subsets`), each subset is embedded chunk by chunk (`embed`, any chunk
size gives the same embeddings) and then scored as a whole (`score`):

  vision   = clamp(m · mutual map, 0, 1)       m = 0.5: a distance of unit vectors is in [0, 2]
  v-score  = RsCIN(max of vision)
  map      = (1 − w) · vision + w · language   language = FADE's zero-shot language map
  score    = (1 − w) · v-score + w · language AC

w = --language-weight, 0 by default (MuSc alone, the paper's method; the language pass costs a
FADE forward at 240/448/896 px). The mutual map is resized (bilinear) to the language grid
before fusing, as FADE fuses its scales. The tensor steps are in `musc.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Iterable, Sequence

import torch
from PIL import Image

from ..errors import UsageError
from ..model.backbone import Backbone, preprocess_batch
from . import musc
from .base import subsets  # noqa: F401 - re-exported: MuSc's subsets are the generic ones
from .base import PipelineBase, Result, to_results
from .fade import FadeConfig, FadePipeline
from .guidance import resize_map

DEFAULT_SCALE = 512  # MuSc's runs of ViT-B-16-plus-240 use 240 and 512 px; 512 gives a 32×32 grid
DEFAULT_SUBSET_SIZE = 200  # about one MVTec-AD / VisA class test set


@dataclass(frozen=True)
class MuscOptions:
    """MuSc settings; `layers` None = the backbone's quarter points (2, 5, 8, 11 for 12 blocks)."""

    scale: int = DEFAULT_SCALE
    layers: tuple[int, ...] | None = None
    r_values: tuple[int, ...] = musc.DEFAULT_R_VALUES
    fraction: float = musc.DEFAULT_FRACTION
    rscin_windows: tuple[int, ...] = musc.DEFAULT_RSCIN_WINDOWS
    multiplier: float = 0.5
    language_weight: float = 0.0
    subset_size: int = DEFAULT_SUBSET_SIZE
    block_elements: int = musc.DEFAULT_BLOCK_ELEMENTS
    language: FadeConfig = FadeConfig(classification="language", segmentation="language")  # with language_weight > 0

    def check(self) -> list[str]:
        errs = []
        if self.layers is not None and (not self.layers or len(set(self.layers)) != len(self.layers)):
            errs.append("--layers: give distinct 0-based block indices, e.g. 2,5,8,11")
        if not self.r_values or any(r < 1 or r % 2 == 0 for r in self.r_values):
            errs.append("--r-values: give odd aggregation degrees >= 1, e.g. 1,3,5")
        if not 0.0 < self.fraction <= 1.0:
            errs.append(f"--lowest-fraction must be in (0, 1], not {self.fraction}")
        if any(k < 1 for k in self.rscin_windows):
            errs.append("--rscin-windows: window sizes must be >= 1 (none: no re-ranking)")
        if not 0.0 <= self.language_weight <= 1.0:
            errs.append(f"--language-weight must be in [0, 1], not {self.language_weight}")
        if self.subset_size < 2:
            errs.append(f"--subset-size must be at least 2 (images are scored against each other), not {self.subset_size}")
        if self.multiplier <= 0:
            errs.append(f"the map multiplier must be > 0, not {self.multiplier}")
        return errs

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class MuscEmbeddings:
    """What scoring needs of a set of images: CLS (B, D), tokens (B, layers, L, C), and with
    language fusion FADE's language map (B, G, G) and score (B,)."""

    cls: torch.Tensor
    tokens: torch.Tensor
    language_map: torch.Tensor | None = None
    language_score: torch.Tensor | None = None

    @staticmethod
    def concat(parts: Sequence["MuscEmbeddings"]) -> "MuscEmbeddings":
        def cat(name):
            values = [getattr(p, name) for p in parts]
            return torch.cat(values) if values[0] is not None else None

        return MuscEmbeddings(cat("cls"), cat("tokens"), cat("language_map"), cat("language_score"))

    def __len__(self) -> int:
        return self.cls.shape[0]

    def to(self, device) -> "MuscEmbeddings":
        """The same embeddings on `device` (the Ray engine ships them between actors on the host)."""
        move = lambda t: t.to(device) if t is not None else None  # noqa: E731
        return MuscEmbeddings(move(self.cls), move(self.tokens), move(self.language_map), move(self.language_score))


class MuscPipeline(PipelineBase):
    """MuSc for one product class: `pipeline(images) -> list[Result]` scores the images together."""

    few_shot = False
    scores_whole_batch = True  # scores depend on the whole batch: engines score subsets, not chunks
    reference_bank = None
    method_label = "musc"

    def __init__(self, backbone: Backbone, options: MuscOptions, class_name: str, language=None):
        errs = options.check()
        if errs:
            raise UsageError(errs[0])
        backbone.check_scale(options.scale)
        depth = len(backbone.model.visual.transformer.resblocks)
        layers = options.layers if options.layers is not None else musc.quarter_layers(depth)
        if any(not 0 <= l < depth for l in layers):
            raise UsageError(f"--layers {','.join(map(str, layers))}: {backbone.model_name} has blocks 0..{depth - 1}")
        self.backbone = backbone
        self.options = replace(options, layers=tuple(layers))
        self.class_name = class_name
        self.language = language  # a language-only FadePipeline, with --language-weight > 0

    @classmethod
    def from_config(cls, backbone: Backbone, options: MuscOptions, class_name: str, text_cache=None) -> "MuscPipeline":
        language = None
        if options.language_weight > 0:
            language = FadePipeline.from_config(backbone, options.language, class_name, text_cache=text_cache)
        return cls(backbone, options, class_name, language)

    @property
    def config(self) -> MuscOptions:
        return self.options

    @property
    def bank_layout(self):
        raise UsageError("--method musc is zero-shot: it has no reference bank")

    def few_shot_variant(self):
        raise UsageError("--method musc is zero-shot: it has no few-shot variant")

    def explain(self, images):
        raise UsageError("explain does not apply to --method musc: it uses no prompts")

    @property
    def banks(self) -> list[str]:
        return self.language.banks if self.language is not None else []

    def embed(self, images: Sequence[Image.Image], extra_features: Iterable[str] = ()) -> MuscEmbeddings:
        """One backbone forward at the MuSc scale (and FADE's language pass if fused)."""
        del extra_features  # zero-shot only: no reference-bank features
        pixels = preprocess_batch(images, self.options.scale, self.backbone.device)
        cls, tokens = self.backbone.encode_layers(pixels, self.options.layers)
        out = MuscEmbeddings(cls=cls, tokens=tokens)
        if self.language is not None:
            results = self.language(images)
            out.language_map = torch.stack([r.map for r in results]).to(tokens.device)
            out.language_score = torch.tensor([r.score for r in results], device=tokens.device)
        return out

    @staticmethod
    def concat_embeddings(parts: Sequence[MuscEmbeddings]) -> MuscEmbeddings:
        """One subset's embeddings from those of its chunks (whole-batch methods' engines use this)."""
        return MuscEmbeddings.concat(parts)

    def score(self, emb: MuscEmbeddings, reference_bank=None) -> list[Result]:
        """Score the images of one subset against each other (at least two)."""
        if reference_bank is not None:
            raise UsageError("--method musc is zero-shot: it takes no reference bank")
        return score_embeddings(self.options, emb)

    def __call__(self, images: Sequence[Image.Image]) -> list[Result]:
        return self.score(self.embed(images))


def score_embeddings(opt: MuscOptions, emb: MuscEmbeddings) -> list[Result]:
    """One subset's Results from its embeddings; needs no model (a Ray task runs it as is)."""
    if len(emb) < 2:
        raise UsageError("musc scores images against each other: a subset needs at least 2 readable images")
    raw = musc.mutual_map([emb.tokens[:, k] for k in range(emb.tokens.shape[1])], opt.r_values, opt.fraction,
                          opt.block_elements)
    vision = (opt.multiplier * raw).clamp(0.0, 1.0)
    vision_score = musc.rscin(musc.image_scores(vision), emb.cls, opt.rscin_windows)
    w = opt.language_weight
    if emb.language_map is None or w == 0:
        return to_results(vision_score, vision, vision=vision_score)
    g = max(vision.shape[-1], emb.language_map.shape[-1])
    fused = ((1.0 - w) * resize_map(vision, (g, g)) + w * resize_map(emb.language_map.float(), (g, g))).clamp(0, 1)
    score = ((1.0 - w) * vision_score + w * emb.language_score.float()).clamp(0, 1)
    return to_results(score, fused, language=emb.language_score, vision=vision_score)


# ---- registry entry ---------------------------------------------------------------------------
# the MuSc flags, and FADE's language flags (they shape the language map fused with --language-weight)
MUSC_FLAGS = frozenset({"musc_scale", "layers", "r_values", "lowest_fraction", "rscin_windows", "language_weight",
                        "subset_size", "scales", "cls_scale", "cls_prompts", "seg_prompts"})


def _ints(values, flag: str, allow_empty: bool = False) -> tuple[int, ...] | None:
    text = str(values).strip()
    if allow_empty and text.lower() in ("", "none"):
        return ()
    try:
        out = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--{flag} {text!r}: expected comma-separated integers") from None
    if not out and not allow_empty:
        raise UsageError(f"--{flag}: give at least one value")
    return out


@dataclass(frozen=True)
class MuscMethod:
    """The MuSc registry entry: zero-shot, scores whole subsets."""

    name: str = "musc"
    flags: frozenset[str] = MUSC_FLAGS
    scores_whole_batch: bool = True
    zero_shot_only: bool = True  # --refs / --bank / --shots are refused

    def options(self, values, map_size: int = 448) -> MuscOptions:
        from .base import parse_scales, split_list

        defaults, fade = MuscOptions(), FadeConfig()
        layers = values.get("layers")
        language = replace(defaults.language, cls_scale=int(values.get("cls_scale", fade.cls_scale)),
                           seg_scales=parse_scales(str(values.get("scales", "240,448,896"))),
                           cls_prompts=split_list(values.get("cls_prompts")) or fade.cls_prompts,
                           seg_prompts=split_list(values.get("seg_prompts")) or fade.seg_prompts, smooth_size=map_size)
        options = MuscOptions(
            scale=int(values.get("musc_scale", defaults.scale)),
            layers=_ints(layers, "layers") if layers not in (None, "", "auto") else None,
            r_values=_ints(values.get("r_values", "1,3,5"), "r-values"),
            fraction=float(values.get("lowest_fraction", defaults.fraction)),
            rscin_windows=_ints(values.get("rscin_windows", "1,2,3"), "rscin-windows", allow_empty=True),
            language_weight=float(values.get("language_weight", defaults.language_weight)),
            subset_size=int(values.get("subset_size", defaults.subset_size)),
            language=language,
        )
        problems = options.check() + (language.check() if options.language_weight > 0 else [])
        if problems:
            raise UsageError(problems[0])
        return options

    def pipeline(self, backbone, options: MuscOptions, class_name: str, reference_bank=None, text_cache=None,
                 few_shot: bool | None = None) -> MuscPipeline:
        if reference_bank is not None or few_shot:
            raise UsageError("--method musc is zero-shot (it scores the images against each other): no --refs or --bank")
        return MuscPipeline.from_config(backbone, options, class_name, text_cache)

    def prompt_sets(self, options: MuscOptions, class_name: str) -> list:
        if options.language_weight <= 0:
            return []
        from .fade import FADE

        return FADE.prompt_sets(options.language, class_name)


MUSC = MuscMethod()
