"""Text embeddings of prompts: the on-disk text-encoder cache and the mean-embedding classifier.

FADE (sec. 3.1-3.2) scores an embedding f against the *mean* text embedding of the normal
prompts (h−) and of the anomalous prompts (h+), each prompt embedded as
"a photo of a {prompt}." and L2-normalised, the means not re-normalised.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import PromptBankError
from .banks import PromptBank

DEFAULT_FRAME = "a photo of a {prompt}."  # the official GEM wrapper's text frame


def default_cache_dir() -> Path:
    """$FADE_CACHE_DIR, else $XDG_CACHE_HOME/fade, else ~/.cache/fade."""
    if os.environ.get("FADE_CACHE_DIR"):
        return Path(os.environ["FADE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fade"


class TextEncoderCache:
    """Text embeddings, keyed by model, weights fingerprint, precision, text frame and the texts.

    The one text encoder of a run: every method encodes through it, the text frame an argument
    of `encode` (FADE frames prompts as "a photo of a {prompt}.", ALFA's are whole sentences).
    Three levels: `memo` (every embedding this object returned, in memory), the disk folder (one
    `.npy` per key, written atomically, read with allow_pickle=False), then the model. A changed
    prompt, bank, frame or model gives a different key, so stale embeddings are never reused.

    It is also what travels to Ray actors: pickling drops the backbone and keeps the memo, and
    `bind(backbone)` on the actor gives a cache that answers the driver's prompts from memory.
    """

    def __init__(self, backbone, cache_dir: Path | None = None, enabled: bool = True,
                 memo: dict[str, np.ndarray] | None = None):
        self.backbone = backbone
        self.dir = (cache_dir or default_cache_dir()) / "text"
        self.enabled = enabled  # the disk folder; the memo is always on
        self.memo: dict[str, np.ndarray] = dict(memo or {})
        self.hits = 0
        self.misses = 0

    def key(self, texts: list[str], frame: str = DEFAULT_FRAME) -> str:
        # the precision too: bf16 embeddings differ from fp32 ones by ~5e-3, and must not stand in for them
        blob = json.dumps([self.backbone.model_name, self.backbone.weights_id, str(self.backbone.dtype), frame, texts],
                          ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def encode(self, texts: list[str], frame: str = DEFAULT_FRAME) -> torch.Tensor:
        """(T, D) L2-normalised embeddings of the texts, each put in `frame` ("{prompt}" = as is)."""
        key = self.key(texts, frame)
        shape = (len(texts), self.backbone.embed_dim)
        arr = self.memo.get(key)
        if arr is not None and arr.shape == shape:
            self.hits += 1
            return torch.from_numpy(arr.copy())
        path = self.dir / f"{key}.npy"
        if self.enabled and path.is_file():
            try:
                arr = np.load(path, allow_pickle=False)
                if arr.shape == shape:
                    self.hits += 1
                    self.memo[key] = arr.copy()
                    return torch.from_numpy(arr)
            except (OSError, ValueError):
                pass  # a damaged cache file is recomputed and replaced
        self.misses += 1
        emb = self.backbone.encode_texts([frame.replace("{prompt}", t) for t in texts])
        self.memo[key] = emb.detach().cpu().numpy().copy()
        if self.enabled:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                with open(tmp, "wb") as fh:
                    np.save(fh, emb.numpy())
                os.replace(tmp, path)
            except OSError:
                pass  # a read-only cache is not an error: we just recompute next time
        return emb

    def __getstate__(self) -> dict:
        # the model stays behind: the receiver binds its own copy (`bind`)
        return {**self.__dict__, "backbone": None}

    def bind(self, backbone) -> "TextEncoderCache":
        """This cache (folder, setting, memo) for `backbone`, with fresh hit counters."""
        return TextEncoderCache(backbone, self.dir.parent, enabled=self.enabled, memo=self.memo)


@dataclass
class TextClassifier:
    """Mean normal / anomalous text embeddings (h−, h+) of a prompt set."""

    h_normal: torch.Tensor  # (D,)
    h_anomalous: torch.Tensor  # (D,)
    counts: tuple[int, int]
    banks: tuple[str, ...]
    texts: tuple[str, ...] = ()  # the prompts, normal then anomalous (for `explain`)
    embeddings: torch.Tensor | None = None  # (T_n + T_a, D), rows as `texts`


def build_text_classifier(banks: list[PromptBank], class_name: str, encoder: TextEncoderCache,
                          frame: str = DEFAULT_FRAME) -> TextClassifier:
    """h− and h+ over the union of the banks' prompts for this class (FADE eq. 1)."""
    # a {pos} placeholder (FiLo banks) is dropped here: positions are filled only by fade_cli/methods/filo.py
    normal = [t for b in banks for t in b.texts("normal", class_name, pos="")]
    anomalous = [t for b in banks for t in b.texts("anomalous", class_name, pos="")]
    if not normal or not anomalous:
        names = ", ".join(b.label for b in banks)
        raise PromptBankError(f"banks {names} give no {'normal' if not normal else 'anomalous'} prompts for class '{class_name}'")
    emb = encoder.encode(normal + anomalous, frame)
    return TextClassifier(
        h_normal=emb[: len(normal)].mean(dim=0),
        h_anomalous=emb[len(normal):].mean(dim=0),
        counts=(len(normal), len(anomalous)),
        banks=tuple(b.label for b in banks),
        texts=tuple(normal + anomalous),
        embeddings=emb,
    )
