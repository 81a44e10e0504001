"""`--method dino`: FADE's CLIP language guidance with a DINOv2 few-shot vision memory bank.

The language part is FADE's (fade_cli/methods/fade.py): the CLS score at the classification
scale, the GEM-patch language map at the segmentation scales fused to the G×G grid of the
largest. The vision part is AnomalyDINO's (fade_cli/methods/anomalydino.py): DINOv2 patch
tokens of the query against those of the references, a (B, G, G) distance map smoothed with
σ = 4 px at the evaluation size, and the mean of the top 1 % patch distances. They are fused as
FADE fuses its few-shot vision term:

    map   = clip((1 − w)·language + w·m·vision, 0, 1)        w = 0.85, m = 1
    score = clip(½(language CLS score + m·q), 0, 1)

(`--segmentation-mode` / `--classification-mode` language|vision|both as for FADE.) w is FADE's
few-shot weight; m = 1 keeps DINOv2's cosine distance as it is. Neither was tuned: there were no
pretrained weights or datasets where this was built (docs/methods.md). Few-shot only.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, replace
from typing import Mapping, Sequence

import torch
from PIL import Image

from ..errors import MemoryBankError, UsageError
from ..model.backbone import preprocess_scales
from ..model.dino import DEFAULT_VISION_SIZE, DINO_MODELS, DinoBackbone, load_dino_backbone
from . import anomalydino as ad
from .base import BankLayout, PipelineBase, PromptSet, Result, to_results
from .fade import FADE, FadeConfig, FadePipeline, language_fields
from .guidance import fuse_scales, language_score, to_grid
from .memory import MemoryBank

DEFAULT_VISION_PRETRAINED = "lvd142m"  # timm's tag of the released DINOv2 weights
DEFAULT_VISION_WEIGHT = 0.85  # FADE's few-shot weight
DEFAULT_VISION_MULTIPLIER = 1.0  # DINOv2's 1 − cos as it is
FEW_SHOT_ONLY = "--method dino is few-shot only: give good reference images (--refs or --bank; eval: --shots without 0)"


@dataclass(frozen=True)
class DinoConfig:
    """Settings of `--method dino`; `language` holds FADE's language settings (scales, prompts, modes)."""

    language: FadeConfig = field(default_factory=FadeConfig)
    vision_backbone: str = DINO_MODELS[0]
    vision_pretrained: str = DEFAULT_VISION_PRETRAINED
    vision_size: int = DEFAULT_VISION_SIZE
    augment_refs: str = "rotate"  # AnomalyDINO's "agnostic" preset
    mask: str = "auto"  # AnomalyDINO's per-category rule
    mask_threshold: float = ad.MASK_THRESHOLD
    vision_weight: float = DEFAULT_VISION_WEIGHT
    vision_multiplier: float = DEFAULT_VISION_MULTIPLIER
    smooth_sigma: float = ad.SMOOTH_SIGMA  # pixels at smooth_size
    smooth_size: int = ad.SMOOTH_SIZE
    vision_weights_id: str | None = None  # filled by the pipeline: the DINOv2 weights' fingerprint

    def check(self) -> list[str]:
        errs = self.language.check()
        if self.augment_refs not in ad.AUGMENTS:
            errs.append(f"--augment-refs {self.augment_refs}: expected {' or '.join(ad.AUGMENTS)}")
        if self.mask not in ad.MASK_MODES:
            errs.append(f"--mask {self.mask}: expected auto, on or off")
        if not 0.0 <= self.vision_weight <= 1.0:
            errs.append(f"--vision-weight {self.vision_weight}: must be in [0, 1]")
        if self.vision_multiplier < 0:
            errs.append(f"--vision-multiplier {self.vision_multiplier}: must be >= 0")
        if self.vision_size <= 0:
            errs.append(f"--vision-size {self.vision_size}: must be a positive multiple of the patch size")
        return errs

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class DinoEmbeddings:
    """A batch's CLIP embeddings per scale (language part) and DINOv2 tokens per image (vision part)."""

    clip: dict
    dino: list[tuple[torch.Tensor, tuple[int, int]]]


@functools.lru_cache(maxsize=4)
def shared_dino_backbone(name: str, pretrained: str, device: str, size: int, dtype: torch.dtype) -> DinoBackbone:
    """One DINOv2 backbone per (weights, device, size) in a process: evaluation builds a pipeline per class."""
    return load_dino_backbone(name, pretrained, device, size, dtype)


@dataclass(frozen=True)
class DinoBankLayout(BankLayout):
    """A DINOv2 reference bank: the tokens at the vision input size (`scales`), feature "dinov2",
    built and checked with the method's own DINOv2 backbone (the CLIP backbone callers pass is
    not used)."""

    dino: DinoBackbone | None = field(default=None, compare=False)
    augment: str = "rotate"

    @classmethod
    def of(cls, dino: DinoBackbone, augment: str) -> "DinoBankLayout":
        return cls(scales=(dino.size,), feature=ad.FEATURE, dino=dino, augment=augment)

    def check(self, bank: MemoryBank, backbone=None) -> None:
        """MemoryBankError (one line) unless `bank` holds this backbone's DINOv2 tokens at this size."""
        bank.check_compatible(self.dino, self.scales, self.feature)
        if bank.meta.get("augment_refs") != self.augment:
            raise MemoryBankError(f"reference bank was built with --augment-refs {bank.meta.get('augment_refs')}; "
                                  f"this run asks for {self.augment}")
        if "tokens" not in bank.arrays or "grids" not in bank.arrays:
            raise MemoryBankError("reference bank has no DINOv2 reference tokens (built by an older fade?)")

    def embed(self, backbone, images: Sequence[Image.Image], meta: dict | None = None) -> MemoryBank:
        if not images:
            raise UsageError("no reference images")
        return ad.build_dino_bank(self.dino, images, self.augment, meta)


class DinoPipeline(PipelineBase):
    """FADE language + DINOv2 vision for one product class: `pipeline(images) -> list[Result]`."""

    def __init__(self, backbone, config: DinoConfig, class_name: str, language: FadePipeline,
                 reference_bank: MemoryBank | None = None, few_shot: bool | None = None, dino: DinoBackbone | None = None):
        self.backbone = backbone
        self._dino = dino  # loaded on first use: `explain` and `prompts embed` need only the language part
        self.options = config
        self.class_name = class_name
        self.language = language  # FADE's text classifiers (and `explain`); its own vision part is unused
        self.few_shot = reference_bank is not None if few_shot is None else few_shot
        self.reference_bank = reference_bank
        self.masked = ad.masking_applies(config.mask, class_name)
        self._prepared_banks: dict[int, tuple] = {}  # id(bank) -> (bank, patches on the device, PCA)
        if reference_bank is not None:
            self.bank_layout.check(reference_bank, backbone)

    @classmethod
    def from_config(cls, backbone, config: DinoConfig, class_name: str, reference_bank: MemoryBank | None = None,
                    text_cache=None, few_shot: bool | None = None) -> "DinoPipeline":
        errs = config.check()
        if errs:
            raise UsageError(errs[0])
        if few_shot is False:
            raise UsageError(FEW_SHOT_ONLY)
        language = FadePipeline.from_config(backbone, _language_only(config.language), class_name, text_cache=text_cache,
                                            few_shot=False)
        return cls(backbone, config, class_name, language, reference_bank, few_shot)

    @property
    def dino(self) -> DinoBackbone:
        if self._dino is None:
            o = self.options
            self._dino = shared_dino_backbone(o.vision_backbone, o.vision_pretrained, str(self.backbone.device),
                                              o.vision_size, self.backbone.dtype)
        return self._dino

    @property
    def config(self) -> DinoConfig:
        """The options with the DINOv2 weights' fingerprint (what settings records and manifests keep)."""
        return replace(self.options, vision_weights_id=self.dino.weights_id)

    @property
    def method_label(self) -> str:
        return "dino"

    @property
    def banks(self) -> list[str]:
        return self.language.banks

    @property
    def bank_layout(self) -> DinoBankLayout:
        return DinoBankLayout.of(self.dino, self.options.augment_refs)

    def few_shot_variant(self) -> "DinoPipeline":
        return DinoPipeline(self.backbone, self.options, self.class_name, self.language, few_shot=True, dino=self._dino)

    def explain(self, images: Sequence[Image.Image]) -> list[dict]:
        return self.language.explain(images)

    def embed(self, images: Sequence[Image.Image], extra_features=()) -> DinoEmbeddings:
        """CLIP embeddings of what the language part reads (CLS at the classification scale, GEM
        patches at the segmentation scales, as FADE computes them) and the DINOv2 tokens.
        `extra_features` is accepted for the protocol: the DINOv2 tokens are always there."""
        lang = self.options.language
        cls_lang, seg_lang = lang.classification != "vision", lang.segmentation != "vision"
        scales = ({lang.cls_scale} if cls_lang else set()) | (set(lang.seg_scales) if seg_lang else set())
        clip = {}
        for s, pixels in (preprocess_scales(images, scales, self.backbone.device) if scales else {}).items():
            clip[s] = self.backbone.encode_images(pixels, want_cls=cls_lang and s == lang.cls_scale, want_clip=False,
                                                  want_gem=seg_lang and s in lang.seg_scales,
                                                  gem_iterations=lang.gem_iterations)
        return DinoEmbeddings(clip=clip, dino=self.dino.encode_images(images))

    def _prepared(self, bank: MemoryBank) -> tuple[torch.Tensor, ad.ForegroundPCA | None]:
        """The bank's patches on the DINOv2 device and its foreground PCA (None: no mask), once per bank:
        on a GPU the patches cross from the host once, not per batch."""
        hit = self._prepared_banks.get(id(bank))
        if hit is None or hit[0] is not bank:
            pca = ad.foreground_pca(bank, self.options.mask_threshold) if self.masked else None
            hit = self._prepared_banks[id(bank)] = (bank, bank.patches[self.dino.size].to(self.dino.device), pca)
        return hit[1], hit[2]

    def score(self, embeddings: DinoEmbeddings, reference_bank: MemoryBank | None = None) -> list[Result]:
        """Scores and fused maps (module docstring); `reference_bank` overrides the pipeline's."""
        cfg, lang = self.options, self.options.language
        bank = reference_bank if reference_bank is not None else self.reference_bank
        if bank is None:  # there is no zero-shot DINOv2 mode
            raise UsageError(FEW_SHOT_ONLY)
        if reference_bank is not None:
            self.bank_layout.check(reference_bank, self.backbone)
        grid = max(lang.seg_scales) // self.backbone.patch_size  # FADE's output grid
        patches, pca = self._prepared(bank)
        vision, q = ad.score_tokens(embeddings.dino, patches, pca, grid, cfg.smooth_sigma, cfg.smooth_size)
        m, w = cfg.vision_multiplier, cfg.vision_weight
        vision, vis_score = (m * vision).to(self.backbone.device), (m * q).to(self.backbone.device)

        ac = None
        if lang.classification != "vision":
            ac = language_score(embeddings.clip[lang.cls_scale].cls, self.language.cls_text)
        if lang.segmentation != "vision":
            language = fuse_scales([to_grid(language_score(embeddings.clip[s].gem, self.language.seg_text))
                                    for s in lang.seg_scales])
            fused = language if lang.segmentation == "language" else (1.0 - w) * language + w * vision
        else:
            fused = vision
        if lang.classification == "both":
            score = 0.5 * (ac + vis_score)
        else:
            score = ac if lang.classification == "language" else vis_score
        return to_results(score.clamp(0.0, 1.0), fused.clamp(0.0, 1.0), ac, vis_score)


def _language_only(config: FadeConfig) -> FadeConfig:
    """FADE settings that compute only its language part ('vision' modes: that part is skipped)."""
    mode = lambda m: "vision" if m == "vision" else "language"  # noqa: E731
    return replace(config, classification=mode(config.classification), segmentation=mode(config.segmentation))


# ---- registry entry ------------------------------------------------------------------------------
DINO_FLAGS = frozenset({
    "scales", "cls_scale", "cls_prompts", "seg_prompts", "vision_multiplier", "vision_weight",
    "segmentation_mode", "classification_mode",
    "vision_backbone", "vision_pretrained", "vision_size", "augment_refs", "mask",
})


@dataclass(frozen=True)
class DinoMethod:
    """The `--method dino` registry entry."""

    name: str = "dino"
    flags: frozenset[str] = DINO_FLAGS
    scores_whole_batch: bool = False

    def options(self, values: Mapping[str, object], map_size: int = 448) -> DinoConfig:
        language = FadeConfig(**language_fields(values))
        pick = lambda key, default: default if values.get(key) is None else values[key]  # noqa: E731
        config = DinoConfig(
            language=language,
            vision_backbone=str(pick("vision_backbone", DINO_MODELS[0])),
            vision_pretrained=str(pick("vision_pretrained", DEFAULT_VISION_PRETRAINED)),
            vision_size=int(pick("vision_size", DEFAULT_VISION_SIZE)),
            augment_refs=str(pick("augment_refs", "rotate")),
            mask=str(pick("mask", "auto")),
            vision_weight=float(pick("vision_weight", DEFAULT_VISION_WEIGHT)),
            vision_multiplier=float(pick("vision_multiplier", DEFAULT_VISION_MULTIPLIER)),
            smooth_size=map_size,
        )
        problems = config.check()
        if problems:
            raise UsageError(problems[0])
        return config

    def pipeline(self, backbone, options: DinoConfig, class_name: str, reference_bank: MemoryBank | None = None,
                 text_cache=None, few_shot: bool | None = None) -> DinoPipeline:
        return DinoPipeline.from_config(backbone, options, class_name, reference_bank, text_cache, few_shot)

    def prompt_sets(self, options: DinoConfig, class_name: str) -> list[PromptSet]:
        return FADE.prompt_sets(_language_only(options.language), class_name)

    def bank_layout(self, options: DinoConfig, device: str = "auto", precision: str = "fp32") -> DinoBankLayout:
        """The reference-bank layout without a pipeline, a CLIP model or prompts: `fade bank build`."""
        from ..model.backbone import _precision_dtype, resolve_device

        dev = resolve_device(device)
        dino = shared_dino_backbone(options.vision_backbone, options.vision_pretrained, str(dev), options.vision_size,
                                    _precision_dtype(precision, dev))
        return DinoBankLayout.of(dino, options.augment_refs)


DINO = DinoMethod()
