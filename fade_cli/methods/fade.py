"""The FADE method as a composition of backbone, prompts, memory bank and guidance.

Per image (FADE sec. 3, official defaults):
  AC, language: CLIP CLS at 240 against the class-named WinCLIP prompts.
  AS, language: GEM patches at 240/448/896 against WinCLIP + LLM prompts with class "object".
  AS, vision:   0-shot: the query's own GEM patches, 2nd nearest neighbour;
                k-shot: the references' CLIP patches per scale, nearest neighbour.
  Each scale's map is resized to the largest grid (56×56) and averaged.
  map   = clip((1 − w)·language + w·m·vision, 0, 1)
  score = language AC (0-shot), or clip(½(language AC + max(m·vision)), 0, 1) (k-shot).

FiLo / FiLo++ training-free parts (fade_cli/methods/filo.py) are switches in FadeConfig; with all
off (the default) this is FADE, bit for bit.

Settings (FadeConfig) are data; the defaults reproduce the official FADE settings.
Zero-shot (no references): vision guidance from the query's own GEM patches (2nd nearest
neighbour), multiplier 80, weight 0.5 — the official README's zero-shot settings.
Few-shot (reference images or a saved bank): CLIP patches of the references (nearest
neighbour), multiplier 3.5, weight 0.85 — the official run script's defaults with the README's
few-shot feature choice. Every value is overridable; `resolved` fills the preset.

The pipeline does no file I/O: it takes PIL images and returns tensors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Iterable, Mapping, Sequence

from PIL import Image

from ..errors import UsageError
from ..model.backbone import Backbone, ImageEmbeddings, preprocess_scales
from ..prompts.banks import PromptBank, load_bank
from ..prompts.text import TextClassifier, TextEncoderCache, build_text_classifier
from .base import BankLayout, PipelineBase, PromptSet, Result, bank_for_scoring, parse_scales, split_list, to_results
from .filo import MULTI_SHAPE_GRID, FiloRefinement, FiloText, any_switch, build_filo_text, method_label, multi_shape_map, needs_foreground
from .guidance import fuse_scales, language_score, to_grid
from .memory import MemoryBank, self_knn_distance

MODES = ("language", "vision", "both")
FEATURES = ("clip", "gem")

ZERO_SHOT = {"vision_multiplier": 80.0, "vision_weight": 0.5, "vision_feature": "gem"}
FEW_SHOT = {"vision_multiplier": 3.5, "vision_weight": 0.85, "vision_feature": "clip"}


@dataclass(frozen=True)
class FadeConfig:
    cls_scale: int = 240
    seg_scales: tuple[int, ...] = (240, 448, 896)
    cls_prompts: tuple[str, ...] = ("winclip",)
    seg_prompts: tuple[str, ...] = ("winclip", "fade-llm")
    seg_class_name: str = "object"  # FADE's segmentation prompts are object-agnostic
    classification: str = "both"  # language | vision | both ("both" = language alone in 0-shot)
    segmentation: str = "both"
    seg_feature: str = "gem"
    vision_feature: str | None = None  # None: preset (gem 0-shot, clip few-shot)
    vision_multiplier: float | None = None
    vision_weight: float | None = None
    gem_iterations: int = 1
    text_frame: str = "a photo of a {prompt}."
    # FiLo / FiLo++ training-free switches (fade_cli/methods/filo.py); these defaults are plain FADE.
    positions: bool = False  # second language pass with position-enhanced prompts
    position_prompts: tuple[str, ...] = ("filo",)  # banks whose {pos} prompts that pass uses
    object_prior: float | None = None  # λ: maps outside the estimated object multiplied by it
    multi_shape: bool = False  # patch features averaged over fixed kernels before text matching
    smooth_sigma: float = 0.0  # Gaussian σ in pixels of a smooth_size × smooth_size map; 0 = off
    smooth_size: int = 448  # the evaluation resolution σ is measured at
    fg_matching: bool = False  # few-shot vision map × (λ + (1 − λ)·foreground), after the image score
    multi_shape_grid: int = MULTI_SHAPE_GRID  # grid the multi-shape kernels are sized for (0: same on every grid)
    filo_score: bool = False  # image score ½(CLS language + max of the map before suppression), FiLo's

    def resolved(self, few_shot: bool) -> "FadeConfig":
        preset = FEW_SHOT if few_shot else ZERO_SHOT
        return replace(self, **{k: v for k, v in preset.items() if getattr(self, k) is None})

    def check(self) -> list[str]:
        """Problems with the settings, as one-line messages."""
        errs = []
        if self.classification not in MODES or self.segmentation not in MODES:
            errs.append(f"modes must be one of {', '.join(MODES)}")
        for name in ("seg_feature", "vision_feature"):
            value = getattr(self, name)
            if value is not None and value not in FEATURES:
                errs.append(f"{name} must be clip or gem, not {value!r}")
        if not self.seg_scales:
            errs.append("at least one segmentation scale is needed")
        if self.vision_weight is not None and not 0.0 <= self.vision_weight <= 1.0:
            errs.append(f"vision weight must be in [0, 1], not {self.vision_weight}")
        if self.gem_iterations < 0:
            errs.append("GEM iterations must be >= 0")
        if self.object_prior is not None and not 0.0 <= self.object_prior <= 1.0:
            errs.append(f"object prior λ must be in [0, 1], not {self.object_prior}")
        if self.smooth_sigma < 0 or self.smooth_size < 1:
            errs.append(f"smoothing σ must be >= 0 (0 = off), not {self.smooth_sigma}")
        if self.positions and self.segmentation == "vision":
            errs.append("position-enhanced prompts refine the language map: they need segmentation mode language or both")
        if self.positions and not self.position_prompts:
            errs.append("position-enhanced prompts need at least one prompt bank")
        if self.multi_shape_grid < 0:
            errs.append(f"multi-shape grid must be >= 0 (0 = kernels unscaled), not {self.multi_shape_grid}")
        if self.filo_score and self.classification == "vision":
            errs.append("FiLo's image score uses the CLS language score: it needs classification mode language or both")
        return errs

    def as_dict(self) -> dict:
        return asdict(self)



class FadePipeline(PipelineBase):
    """FADE for one product class: `pipeline(images) -> list[Result]`."""

    def __init__(
        self,
        backbone: Backbone,
        config: FadeConfig,
        class_name: str,
        cls_text: TextClassifier | None,
        seg_text: TextClassifier | None,
        reference_bank: MemoryBank | None = None,
        few_shot: bool | None = None,
        filo_text: FiloText | None = None,
    ):
        self.backbone = backbone
        # few_shot without a bank: the bank comes with each `score` call (evaluation over seeds)
        self.few_shot = reference_bank is not None if few_shot is None else few_shot
        self.options = config  # as given: the few-shot variant resolves these to the few-shot preset
        self.config = config.resolved(self.few_shot)
        self.class_name = class_name
        self.cls_text = cls_text
        self.seg_text = seg_text
        self.reference_bank = reference_bank
        if reference_bank is not None:
            self.bank_layout.check(reference_bank, backbone)
        # FiLo / FiLo++ training-free parts (fade_cli/methods/filo.py); None = plain FADE
        self.filo_text = filo_text
        self.filo = None
        if any_switch(self.config):
            if (self.config.positions or needs_foreground(self.config)) and filo_text is None:
                raise UsageError("these FiLo switches need their text embeddings: build the pipeline with from_config")
            self.filo = FiloRefinement(self.config, filo_text or FiloText())

    @classmethod
    def from_config(
        cls,
        backbone: Backbone,
        config: FadeConfig,
        class_name: str,
        reference_bank: MemoryBank | None = None,
        text_cache: TextEncoderCache | None = None,
        few_shot: bool | None = None,
    ) -> "FadePipeline":
        errs = config.check()
        if errs:
            raise UsageError(errs[0])
        for scale in (config.cls_scale, *config.seg_scales):
            backbone.check_scale(scale)
        encoder = text_cache or TextEncoderCache(backbone)
        cls_text = seg_text = None
        if config.classification != "vision":
            cls_text = build_text_classifier(_banks(config.cls_prompts), class_name, encoder, config.text_frame)
        if config.segmentation != "vision":
            seg_text = build_text_classifier(_banks(config.seg_prompts), config.seg_class_name, encoder, config.text_frame)
        filo_text = build_filo_text(config, class_name, encoder) if any_switch(config) else None
        return cls(backbone, config, class_name, cls_text, seg_text, reference_bank, few_shot=few_shot, filo_text=filo_text)

    @property
    def method_label(self) -> str:
        """What result rows record as their method: 'fade', or 'filo[...]' with the FiLo switches on."""
        return method_label(self.config)

    def few_shot_variant(self) -> "FadePipeline":
        """The same pipeline scoring with reference banks passed to `score` (evaluation over seeds)."""
        # from the options as given, not the resolved zero-shot ones: unset values take the
        # few-shot preset (clip patches, m = 3.5, w = 0.85), as `detect --refs` does
        return FadePipeline(self.backbone, self.options, self.class_name, self.cls_text, self.seg_text, few_shot=True,
                            filo_text=self.filo_text)

    @property
    def bank_layout(self) -> BankLayout:
        """Scales and patch feature of the reference bank this pipeline's few-shot mode uses."""
        few = self.options.resolved(few_shot=True) if not self.few_shot else self.config
        return BankLayout(tuple(few.seg_scales), few.vision_feature)

    @property
    def banks(self) -> list[str]:
        labels = []
        for text in (self.cls_text, self.seg_text, self.filo_text):
            for b in text.banks if text else ():
                if b not in labels:
                    labels.append(b)
        return labels

    def _features(self, scale: int) -> tuple[bool, set[str]]:
        """What this configuration needs at one scale: (CLS?, patch features)."""
        cfg = self.config
        feats = set()
        if scale in cfg.seg_scales:
            if cfg.segmentation != "vision" or needs_foreground(cfg):  # FiLo's object prior reads them too
                feats.add(cfg.seg_feature)
            if cfg.segmentation != "language" or (self.few_shot and cfg.classification != "language"):
                feats.add(cfg.vision_feature)
        return scale == cfg.cls_scale and cfg.classification != "vision", feats

    def embed(self, images: Sequence[Image.Image], extra_features: Iterable[str] = ()) -> dict[int, ImageEmbeddings]:
        """One forward per scale. `extra_features` ('clip', 'gem') adds patches at the segmentation
        scales so that other configurations can score the same embeddings."""
        cfg = self.config
        out = {}
        pixels = preprocess_scales(images, {cfg.cls_scale, *cfg.seg_scales}, self.backbone.device)
        for scale, batch in pixels.items():
            want_cls, feats = self._features(scale)
            if scale in cfg.seg_scales:
                feats |= set(extra_features)
            out[scale] = self.backbone.encode_images(
                batch, want_cls=want_cls, want_clip="clip" in feats,
                want_gem="gem" in feats, gem_iterations=cfg.gem_iterations,
            )
        return out

    def score(self, embeddings: dict[int, ImageEmbeddings], reference_bank: MemoryBank | None = None) -> list[Result]:
        """Scores and fused maps from embeddings (FADE sec. 3); `reference_bank` overrides the pipeline's."""
        cfg = self.config
        bank = bank_for_scoring(self, reference_bank)
        if cfg.classification == "vision" and not self.few_shot:
            raise UsageError("vision-guided classification needs reference images (--refs or --bank)")
        seg_lang = cfg.segmentation != "vision"
        cls_lang = cfg.classification != "vision"
        cls_vis = cfg.classification != "language" and self.few_shot
        need_vis = cfg.segmentation != "language" or cls_vis

        lang_maps, vis_maps = [], []
        ac = language_score(embeddings[cfg.cls_scale].cls, self.cls_text) if cls_lang else None
        for scale in cfg.seg_scales:
            emb = embeddings[scale]
            if seg_lang:
                patches = emb.gem if cfg.seg_feature == "gem" else emb.clip
                lang_maps.append(multi_shape_map(patches, self.seg_text, reference_grid=cfg.multi_shape_grid)
                                 if cfg.multi_shape else to_grid(language_score(patches, self.seg_text)))
            if need_vis:
                patches = emb.gem if cfg.vision_feature == "gem" else emb.clip
                vis = bank.score(scale, patches) if self.few_shot else self_knn_distance(patches, k=2)
                vis_maps.append(to_grid(vis))

        m = cfg.vision_multiplier
        vision = fuse_scales(vis_maps) * m if vis_maps else None
        language = fuse_scales(lang_maps) if lang_maps else None
        if self.filo is not None:  # FiLo: foreground, positions, smoothing (fade_cli/methods/filo.py)
            language, vision, fg = self.filo.refine(embeddings, language, vision, self.few_shot)
        fused = self._fuse(language, vision)

        # the official code takes the max of the vision map after the multiplier
        vis_score = vision.amax(dim=(1, 2)) if vision is not None else None
        map_max = fused.amax(dim=(1, 2))  # FiLo's image score: the map before suppression
        if self.filo is not None:  # FiLo suppresses outside the object after the image score
            language, vision = self.filo.suppress(language, vision, fg, self.few_shot)
            fused = self._fuse(language, vision)
        if cfg.filo_score:
            score = 0.5 * (ac + map_max)
        elif cls_lang and cls_vis:
            score = 0.5 * (ac + vis_score)
        elif cls_vis:
            score = vis_score
        else:
            score = ac
        score = score.clamp(0.0, 1.0)
        return to_results(score, fused, ac, vis_score)

    def explain(self, images: Sequence[Image.Image]) -> list[dict]:
        """Per image and state: the classification prompts with their cosine to the CLS embedding
        at the classification scale (FADE keeps every prompt: h± are plain means)."""
        cfg, text = self.config, self.cls_text
        if text is None or text.embeddings is None:
            raise UsageError("explain needs the language classification prompts (classification mode language or both)")
        pixels = preprocess_scales(images, {cfg.cls_scale}, self.backbone.device)[cfg.cls_scale]
        cls = self.backbone.encode_images(pixels, want_cls=True, want_clip=False, want_gem=False).cls
        sims = (cls @ text.embeddings.to(cls.device, cls.dtype).T).float().cpu().tolist()
        t_n = text.counts[0]
        return [{"banks": list(text.banks),
                 "normal": [{"text": t, "similarity": v, "kept": True} for t, v in zip(text.texts[:t_n], row[:t_n])],
                 "anomalous": [{"text": t, "similarity": v, "kept": True} for t, v in zip(text.texts[t_n:], row[t_n:])]}
                for row in sims]

    def _fuse(self, language: torch.Tensor | None, vision: torch.Tensor | None) -> torch.Tensor:
        """The map: clip((1 − w)·language + w·vision, 0, 1), or one of them alone (segmentation mode)."""
        cfg = self.config
        if cfg.segmentation == "both":
            fused = (1.0 - cfg.vision_weight) * language + cfg.vision_weight * vision
        else:
            fused = language if cfg.segmentation == "language" else vision
        return fused.clamp(0.0, 1.0)


def _banks(specs: Sequence[str]) -> list[PromptBank]:
    return [load_bank(s) for s in specs]


# ---- registry entries: FADE, and FiLo = FADE with the FiLo parts on by default ------------------
FADE_FLAGS = frozenset({
    "scales", "cls_scale", "cls_prompts", "seg_prompts", "vision_multiplier", "vision_weight", "vision_feature",
    "segmentation_mode", "classification_mode", "positions", "object_prior", "multi_shape", "smooth", "fg_matching",
    "filo_score", "multi_shape_grid",
})


def language_fields(values: Mapping[str, object]) -> dict:
    """FadeConfig's language settings from the command line's values (scales, prompts, modes):
    FADE's own, and the language part of methods that reuse it (dino, musc)."""
    defaults = FadeConfig()
    return dict(
        cls_scale=int(values.get("cls_scale", defaults.cls_scale)),
        seg_scales=parse_scales(str(values.get("scales", "240,448,896"))),
        cls_prompts=split_list(values.get("cls_prompts")) or defaults.cls_prompts,
        seg_prompts=split_list(values.get("seg_prompts")) or defaults.seg_prompts,
        classification=str(values.get("classification_mode", defaults.classification)),
        segmentation=str(values.get("segmentation_mode", defaults.segmentation)),
    )


@dataclass(frozen=True)
class FadeMethod:
    """The FADE registry entry (`filo_preset`: the FiLo parts on unless switched off, for FiLo's entry)."""

    name: str = "fade"
    filo_preset: bool = False
    flags: frozenset[str] = FADE_FLAGS
    scores_whole_batch: bool = False

    def options(self, values: Mapping[str, object], map_size: int = 448) -> FadeConfig:
        """FadeConfig from the command line's values (see `flags`)."""
        from .filo import resolve_switches

        config = FadeConfig(
            **language_fields(values),
            vision_feature=values.get("vision_feature"),
            vision_multiplier=values.get("vision_multiplier"),
            vision_weight=values.get("vision_weight"),
            smooth_size=map_size,
            **resolve_switches(self.filo_preset, *(values.get(k) for k in ("positions", "object_prior", "multi_shape",
                                                                           "smooth", "fg_matching", "filo_score",
                                                                           "multi_shape_grid"))),
        )
        problems = config.check()
        if problems:
            raise UsageError(problems[0])
        return config

    def pipeline(self, backbone, options: FadeConfig, class_name: str, reference_bank: MemoryBank | None = None,
                 text_cache: TextEncoderCache | None = None, few_shot: bool | None = None) -> FadePipeline:
        return FadePipeline.from_config(backbone, options, class_name, reference_bank, text_cache, few_shot)

    def prompt_sets(self, options: FadeConfig, class_name: str) -> list[PromptSet]:
        from .filo import filo_prompt_sets

        sets = []
        if options.classification != "vision":
            sets.append(_prompt_set(options.cls_prompts, class_name, options.text_frame))
        if options.segmentation != "vision":
            sets.append(_prompt_set(options.seg_prompts, options.seg_class_name, options.text_frame))
        return sets + filo_prompt_sets(options, class_name)


def _prompt_set(specs: Sequence[str], class_name: str, frame: str) -> PromptSet:
    """The texts `build_text_classifier` encodes for these banks and class (normal, then anomalous)."""
    banks = _banks(specs)
    return PromptSet(tuple(t for state in ("normal", "anomalous") for b in banks for t in b.texts(state, class_name, pos="")),
                     frame)


FADE = FadeMethod()
FILO = FadeMethod(name="filo", filo_preset=True)
