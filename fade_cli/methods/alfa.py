"""The ALFA method: run-time prompt adaptation + fine-grained aligner (+ memory bank few-shot).

Per image (ALFA sec. 4; our choices where the paper is open are in `rtp.py`, `aligner.py` and
docs/methods.md):
  1. One global forward at 240 px gives f(x) (CLS), CLIP patches and the last layer's values;
     one batched forward of all r×r windows gives the local embeddings f_I,ij and their values.
  2. RTP: the class's prompts (bank `alfa`, full sentences, no text frame) are filtered per
     image against f(x); h+ / h− are the means of the kept prompts.
  3. S_G = anomalous mass of softmax(<f(x), [h+, h−]>/τ) (eq. 10).
  4. Per window size r: S_L per window against the projected prompts (eq. 11), to patches by
     harmonic mean; sizes fused by harmonic mean → the map (patch grid, values in [0, 1]).
  5. Few-shot (sec. 4.3: the memory-bank distances improve S_L before eq. 12's max): the map
     becomes S̃_L = clip(½(S_L + m·M), 0, 1), M the nearest-reference distance ½(1 − cos) of
     CLIP patches at 240 px (or of the window embeddings, `vision_feature="window"`), m = 3.5
     (FADE's few-shot calibration of such distances, ≈0–0.3, onto S_L's 0–1 scale).
  6. Score = ½(S_G + max of the map) (eq. 12).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import torch
from PIL import Image

from ..errors import PromptBankError, UsageError
from ..model.backbone import preprocess_batch
from ..prompts.banks import load_bank
from ..prompts.text import TextEncoderCache
from . import aligner as fga
from .base import (BankLayout, PipelineBase, PromptSet, Result, bank_for_scoring, reference_bank_info, split_list,
                   to_results)
from .memory import MemoryBank
from .rtp import FILTERS, adapted_text, contextual_scores

ALFA_FRAME = "{prompt}"  # ALFA prompts are whole sentences ("A ... image of a ... {class} with ...")
VISION_FEATURES = ("clip", "window")
FEW_SHOT_MULTIPLIER = 3.5  # FADE's few-shot m for nearest-reference CLIP patch distances


def few_shot_map(language: torch.Tensor, distance: torch.Tensor, multiplier: float) -> torch.Tensor:
    """S̃_L (sec. 4.3): the local map with the memory-bank term on its scale, clip(½(S_L + m·M), 0, 1).

    The paper adds the distances "on top of S_L"; averaging the two terms keeps the map in
    [0, 1] (as S_G is) and ranks pixels as their sum does."""
    return (0.5 * (language + multiplier * distance)).clamp(0.0, 1.0)


@dataclass(frozen=True)
class WindowBankLayout(BankLayout):
    """ALFA's window-embedding bank (WinCLIP+'s window-level memory): the references' f_I,ij at
    `image_size`, keyed by window size r (`scales` holds the sizes)."""

    image_size: int = 240

    def embed(self, backbone, images: Sequence[Image.Image], meta: dict | None = None) -> MemoryBank:
        if not images:
            raise UsageError("no reference images")
        parts: dict[int, list[torch.Tensor]] = {r: [] for r in self.scales}
        for img in images:  # one at a time: memory stays flat in the number of references
            pixels = preprocess_batch([img], self.image_size, backbone.device)
            for r, entries in fga.window_bank_entries(backbone, pixels, tuple(self.scales)).items():
                parts[r].append(entries)
        return MemoryBank(patches={r: torch.cat(v) for r, v in parts.items()},
                          meta={**reference_bank_info(backbone, self.feature, len(images)), **(meta or {})})


@dataclass(frozen=True)
class AlfaConfig:
    image_size: int = 240
    windows: tuple[int, ...] = (2, 3)
    aligner: bool = True
    prompt_filter: str = "alfa"  # alfa | filo | none
    prompts: tuple[str, ...] = ("alfa",)
    text_frame: str = ALFA_FRAME
    temperature: float = fga.TEMPERATURE
    ridge: float = fga.RIDGE
    vision_feature: str = "clip"  # few-shot memory bank: clip (patches) or window (window embeddings)
    vision_multiplier: float = FEW_SHOT_MULTIPLIER  # m: puts the bank distance on S_L's scale

    def check(self) -> list[str]:
        errs = []
        if not self.windows or min(self.windows) < 1:
            errs.append("--windows: give one or more window sizes >= 1, e.g. 2,3")
        if self.prompt_filter not in FILTERS:
            errs.append(f"--prompt-filter {self.prompt_filter}: expected one of {', '.join(FILTERS)}")
        if not self.prompts:
            errs.append("ALFA needs at least one prompt bank")
        if self.vision_feature not in VISION_FEATURES:
            errs.append(f"--vision-feature {self.vision_feature}: ALFA's memory bank takes {' or '.join(VISION_FEATURES)}")
        if not self.vision_multiplier >= 0:
            errs.append(f"--vision-multiplier {self.vision_multiplier}: expected a number >= 0")
        if not self.ridge > 0:
            errs.append(f"--ridge {self.ridge}: the aligner's ridge λ must be > 0")
        return errs

    def bank_layout(self) -> BankLayout:
        """The few-shot reference bank: CLIP patches at the image size, or window embeddings per
        window size (feature `window@SIZE`)."""
        if self.vision_feature == "window":
            return WindowBankLayout(self.windows, fga.window_feature(self.image_size), self.image_size)
        return BankLayout((self.image_size,), self.vision_feature)

    def as_dict(self) -> dict:
        return asdict(self)


def alfa_config_from_options(cls_prompts: Sequence[str] = (), image_size: int = 240, windows: str = "2,3",
                             no_aligner: bool = False, no_rtp: bool = False, prompt_filter: str = "alfa",
                             ridge: float | None = None, vision_feature: str | None = None,
                             vision_multiplier: float | None = None) -> AlfaConfig:
    """Command-line options -> AlfaConfig (UsageError on bad values)."""
    try:
        sizes = tuple(sorted({int(w) for w in str(windows).split(",") if w.strip()}))
    except ValueError:
        raise UsageError(f"--windows {windows!r}: expected comma-separated integers like 2,3") from None
    given = {k: v for k, v in (("ridge", ridge), ("vision_feature", vision_feature),
                               ("vision_multiplier", vision_multiplier)) if v is not None}  # None: ALFA's default
    cfg = AlfaConfig(image_size=image_size, windows=sizes, aligner=not no_aligner,
                     prompt_filter="none" if no_rtp else prompt_filter, prompts=tuple(cls_prompts) or AlfaConfig.prompts,
                     **given)
    errs = cfg.check()
    if errs:
        raise UsageError(errs[0])
    return cfg


@dataclass
class AlfaEmbeddings:
    """`AlfaPipeline.embed` output: one aligner forward of a batch."""

    features: fga.AlignerFeatures


class AlfaPipeline(PipelineBase):
    """ALFA for one product class: `pipeline(images) -> list[Result]`, as FadePipeline."""

    def __init__(self, backbone, config: AlfaConfig, class_name: str, normal: torch.Tensor, anomalous: torch.Tensor,
                 banks: tuple[str, ...], reference_bank: MemoryBank | None = None, few_shot: bool | None = None,
                 prompt_texts: tuple[list[str], list[str]] = ([], [])):
        self.backbone = backbone
        self.config = config
        self.class_name = class_name
        self.normal = normal  # (T_n, D) prompt embeddings
        self.anomalous = anomalous  # (T_a, D)
        self._banks = list(banks)
        self.prompt_texts = prompt_texts
        self.reference_bank = reference_bank
        self.few_shot = reference_bank is not None if few_shot is None else few_shot
        if reference_bank is not None:
            self.bank_layout.check(reference_bank, backbone)

    @classmethod
    def from_config(cls, backbone, config: AlfaConfig, class_name: str, reference_bank: MemoryBank | None = None,
                    text_cache: TextEncoderCache | None = None, few_shot: bool | None = None) -> "AlfaPipeline":
        errs = config.check()
        if errs:
            raise UsageError(errs[0])
        backbone.check_scale(config.image_size)
        grid = config.image_size // backbone.patch_size
        if max(config.windows) > grid:
            raise UsageError(f"--windows: a window of {max(config.windows)} patches does not fit the {grid}×{grid} grid")
        encoder = text_cache or TextEncoderCache(backbone)
        banks, normal, anomalous = _prompt_texts(config, class_name)
        emb = encoder.encode(normal + anomalous, config.text_frame)
        return cls(backbone, config, class_name, emb[: len(normal)], emb[len(normal):], tuple(b.label for b in banks),
                   reference_bank, few_shot=few_shot, prompt_texts=(normal, anomalous))

    # ---- the interface FadePipeline also has (CLI, evaluation, engines) ----
    @property
    def method_label(self) -> str:
        c = self.config
        parts = ["alfa"]
        if not c.aligner:
            parts.append("no-aligner")
        if c.prompt_filter != "alfa":
            parts.append(f"filter-{c.prompt_filter}")
        if c.windows != AlfaConfig.windows:
            parts.append("r" + "".join(map(str, c.windows)))
        if c.aligner and c.ridge != AlfaConfig.ridge:
            parts.append(f"ridge={c.ridge:g}")
        if c.vision_feature != AlfaConfig.vision_feature:
            parts.append(f"{c.vision_feature}-bank")
        if c.vision_multiplier != AlfaConfig.vision_multiplier:
            parts.append(f"m={c.vision_multiplier:g}")
        return "+".join(parts)

    @property
    def banks(self) -> list[str]:
        return list(self._banks)

    @property
    def bank_layout(self) -> BankLayout:
        return self.config.bank_layout()

    def few_shot_variant(self) -> "AlfaPipeline":
        return AlfaPipeline(self.backbone, self.config, self.class_name, self.normal, self.anomalous, tuple(self._banks),
                            few_shot=True, prompt_texts=self.prompt_texts)

    def embed(self, images: Sequence[Image.Image], extra_features: Iterable[str] = ()) -> AlfaEmbeddings:
        del extra_features  # the forward always yields what ALFA's memory bank needs (CLIP patches, window embeddings)
        pixels = preprocess_batch(images, self.config.image_size, self.backbone.device)
        return AlfaEmbeddings(fga.encode_with_windows(self.backbone, pixels, self.config.windows))

    def adapted_prompts(self, cls: torch.Tensor):
        """Per-image h+ / h− after the prompt filter, and which prompts were used."""
        return adapted_text(cls, self.normal.to(cls.device, cls.dtype), self.anomalous.to(cls.device, cls.dtype),
                            self.config.prompt_filter)

    def score(self, embeddings: AlfaEmbeddings, reference_bank: MemoryBank | None = None) -> list[Result]:
        cfg = self.config
        feats = embeddings.features
        bank = bank_for_scoring(self, reference_bank)
        h_n, h_a, _ = self.adapted_prompts(feats.cls)
        text = torch.stack([h_n, h_a], dim=1)  # (B, 2, D)
        s_global = torch.softmax(torch.einsum("bd,bsd->bs", feats.cls, text) / cfg.temperature, dim=-1)[:, 1]
        maps = []
        for r in cfg.windows:
            if cfg.aligner:
                u, t = fga.window_value_pairs(feats, r)
                local_text = fga.project_text(text, u, t, cfg.ridge)
            else:
                local_text = text
            win = fga.local_scores(feats.local[r], local_text, cfg.temperature)
            maps.append(fga.windows_to_patches(win, feats.grid, r))
        language = fga.harmonic_mean(maps) if len(maps) > 1 else maps[0]
        vision = None
        if self.few_shot:
            g = feats.grid
            if cfg.vision_feature == "window":
                distance = fga.window_distance_map(feats, bank, cfg.windows)
            else:
                distance = bank.score(cfg.image_size, feats.patches).view(-1, g, g)
            vision = cfg.vision_multiplier * distance  # reported as FADE does: the max after m
            fused = few_shot_map(language, distance, cfg.vision_multiplier)
        else:
            fused = language.clamp(0.0, 1.0)
        score = (0.5 * (s_global + fused.amax(dim=(1, 2)))).clamp(0.0, 1.0)  # eq. 12, S̃_L's max
        return to_results(score, fused, s_global, vision.amax(dim=(1, 2)) if vision is not None else None)

    def explain(self, images: Sequence[Image.Image]) -> list[dict]:
        """Per image and state: each prompt's similarity to f(x), its contextual score (eq. 4) and
        whether the prompt filter kept it, from the same `embed` and `adapted_prompts` scoring uses."""
        cls = self.embed(images).features.cls
        _, _, used = self.adapted_prompts(cls)
        sim_n = cls @ self.normal.to(cls.device, cls.dtype).T
        sim_a = cls @ self.anomalous.to(cls.device, cls.dtype).T
        context = contextual_scores(sim_n, sim_a)
        t_n = self.normal.shape[0]
        out = []
        for i in range(cls.shape[0]):
            entry = {}
            for state, texts, sims, ctx, kept in (
                ("normal", self.prompt_texts[0], sim_n[i], context[i, :t_n], used[i, :t_n]),
                ("anomalous", self.prompt_texts[1], sim_a[i], context[i, t_n:], used[i, t_n:]),
            ):
                entry[state] = [{"text": t, "similarity": float(v), "contextual_score": float(c), "kept": bool(k)}
                                for t, v, c, k in zip(texts, sims.float().cpu().tolist(), ctx.float().cpu().tolist(),
                                                      kept.cpu().tolist())]
            out.append({"banks": self.banks, **entry})
        return out


def _prompt_texts(config: AlfaConfig, class_name: str):
    """(banks, normal texts, anomalous texts): ALFA's prompts for a class, whole sentences."""
    banks = [load_bank(b) for b in config.prompts]
    normal = [t for b in banks for t in b.texts("normal", class_name)]
    anomalous = [t for b in banks for t in b.texts("anomalous", class_name)]
    if not normal or not anomalous:
        raise PromptBankError(f"banks {', '.join(b.label for b in banks)} give no "
                              f"{'normal' if not normal else 'anomalous'} prompts for class '{class_name}'")
    return banks, normal, anomalous


@dataclass(frozen=True)
class AlfaMethod:
    """The ALFA registry entry."""

    name: str = "alfa"
    flags: frozenset[str] = frozenset({"cls_scale", "cls_prompts", "windows", "no_aligner", "no_rtp", "prompt_filter",
                                       "ridge", "vision_feature", "vision_multiplier"})
    scores_whole_batch: bool = False

    def options(self, values: Mapping[str, object], map_size: int = 448) -> AlfaConfig:
        del map_size  # ALFA has no smoothing measured at the evaluation size
        return alfa_config_from_options(cls_prompts=split_list(values.get("cls_prompts")),
                                        image_size=int(values.get("cls_scale", AlfaConfig.image_size)),
                                        windows=str(values.get("windows", "2,3")),
                                        no_aligner=bool(values.get("no_aligner", False)),
                                        no_rtp=bool(values.get("no_rtp", False)),
                                        prompt_filter=str(values.get("prompt_filter") or AlfaConfig.prompt_filter),
                                        ridge=values.get("ridge"), vision_feature=values.get("vision_feature"),
                                        vision_multiplier=values.get("vision_multiplier"))

    def pipeline(self, backbone, options: AlfaConfig, class_name: str, reference_bank: MemoryBank | None = None,
                 text_cache: TextEncoderCache | None = None, few_shot: bool | None = None) -> AlfaPipeline:
        return AlfaPipeline.from_config(backbone, options, class_name, reference_bank, text_cache, few_shot)

    def prompt_sets(self, options: AlfaConfig, class_name: str) -> list[PromptSet]:
        _, normal, anomalous = _prompt_texts(options, class_name)
        return [PromptSet(tuple(normal + anomalous), options.text_frame)]


ALFA = AlfaMethod()
