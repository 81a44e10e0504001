"""Backbone: an open_clip ViT loaded by name and weights, and one forward per image scale.

`load_backbone` turns (model name, pretrained tag | checkpoint path | "none") into a
`Backbone`; `Backbone.encode_images` returns, for one scale, the L2-normalised CLS, CLIP
patch and GEM patch embeddings (FADE sec. 3.2, METHODS.md "Common preprocessing" and "GEM");
`Backbone.encode_texts` returns L2-normalised text embeddings.

Non-native input sizes resample the patch part of the positional embedding bicubically
(antialiased), keeping the CLS position, as the official GEM code does.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import BackboneError, UsageError
from . import gem

DEFAULT_MODEL = "ViT-B-16-plus-240"
DEFAULT_PRETRAINED = "laion400m_e31"
RANDOM_WEIGHTS = "none"  # --pretrained none: random init, for tests and benchmarks only
GEM_DEPTH = 6  # last 6 blocks (the GEM package's depth=7)

# OpenAI CLIP normalisation (open_clip's defaults for the LAION ViT-B-16-plus-240 weights)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImageEmbeddings:
    """Embeddings of a batch at one scale, all L2-normalised, shape (B, D) or (B, g*g, D)."""

    scale: int
    grid: int
    cls: torch.Tensor | None = None
    clip: torch.Tensor | None = None
    gem: torch.Tensor | None = None


def resample_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """(1 + g0², C) positional embedding -> (1 + grid², C): bicubic, antialiased, CLS kept."""
    old = int(math.isqrt(pos.shape[0] - 1))
    if old == grid:
        return pos
    cls_pos, patch_pos = pos[:1], pos[1:]
    patch_pos = patch_pos.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bicubic", antialias=True)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid * grid, -1)
    return torch.cat([cls_pos, patch_pos], dim=0)


def resize_rgb(image: Image.Image, size: int) -> torch.Tensor:
    """RGB PIL image -> (3, size, size) uint8 tensor; square PIL bicubic resize, no crop."""
    resized = image.convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1)


def normalize_pixels(pixels: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """(B, 3, s, s) uint8 -> CLIP-normalised float32, computed on `device` (uint8 travels 4x lighter)."""
    x = pixels.to(device).float().div_(255.0) if device is not None else pixels.float().div_(255.0)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """RGB PIL image -> (3, size, size) normalised tensor; square PIL bicubic resize, no crop."""
    return normalize_pixels(resize_rgb(image, size)[None])[0]


def resolve_device(spec: str) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> torch.device, with a clear error if unusable."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
        try:
            dev = torch.device(spec)
        except RuntimeError:
            raise UsageError(f"--device {spec}: expected cuda or cuda:N") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise UsageError(f"--device {spec}: expected auto, cpu, cuda or cuda:N")


def _precision_dtype(precision: str, device: torch.device) -> torch.dtype:
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise UsageError(f"--precision {precision}: expected fp32, fp16 or bf16")
    if precision == "fp16" and device.type != "cuda":
        # CPU fp16 matrix products are emulated: 4x slower than fp32 here (bench_precision.py).
        # CPU bf16 is allowed: 1.3-3.4x faster than fp32 with AVX512-BF16/AMX (docs/limits.md).
        raise UsageError("--precision fp16 needs a CUDA device; on CPU use fp32 or bf16")
    return dtypes[precision]


def _looks_like_path(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")) or Path(
        pretrained
    ).exists()


def _create_model(model_name: str, pretrained: str):
    import open_clip

    if model_name not in open_clip.list_models():
        raise BackboneError(
            f"unknown model '{model_name}' (open_clip knows e.g. {DEFAULT_MODEL}, ViT-B-16, ViT-L-14)"
        )
    if pretrained == RANDOM_WEIGHTS:
        return open_clip.create_model(model_name, pretrained=None)
    if _looks_like_path(pretrained):
        path = Path(pretrained)
        if not path.is_file():
            raise BackboneError(f"{pretrained}: checkpoint file not found")
        try:
            # open_clip reads .safetensors directly and .pt/.bin with torch.load(weights_only=True),
            # which refuses arbitrary pickled objects.
            return open_clip.create_model(model_name, pretrained=str(path))
        except Exception as exc:  # noqa: BLE001 - any loader failure becomes one line
            raise BackboneError(f"{pretrained}: cannot load as a {model_name} checkpoint ({_first_line(exc)})") from None
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        known = ", ".join(tags) if tags else "none published"
        raise BackboneError(f"unknown pretrained tag '{pretrained}' for {model_name} (known: {known}; or pass a checkpoint path)")
    try:
        return open_clip.create_model(model_name, pretrained=pretrained)
    except Exception as exc:  # noqa: BLE001 - network/hub failures vary by backend
        raise BackboneError(
            f"cannot get the '{pretrained}' weights of {model_name} ({_first_line(exc)}); offline? "
            f"download the checkpoint elsewhere and pass --pretrained /path/to/checkpoint.pt"
        ) from None


@contextlib.contextmanager
def _logging_off():
    """open_clip logs through the root logger (random-init warnings, download errors); we report
    the outcome ourselves in one line."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _check_supported(model) -> None:
    visual = getattr(model, "visual", None)
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    ok = (
        blocks is not None
        and getattr(visual, "attn_pool", None) is None
        and not getattr(visual, "final_ln_after_pool", False)
        and all(isinstance(getattr(b, "attn", None), torch.nn.MultiheadAttention) for b in blocks)
        and hasattr(model, "token_embedding")
    )
    if not ok:
        raise BackboneError("only plain open_clip CLIP ViT models are supported (e.g. ViT-B-16-plus-240, ViT-B-16, ViT-L-14)")
    if len(blocks) <= GEM_DEPTH:
        raise BackboneError(f"the model has {len(blocks)} blocks; the GEM path needs more than {GEM_DEPTH}")


@dataclass
class Backbone:
    """A loaded CLIP ViT with the GEM path. Use `load_backbone` to make one."""

    model: torch.nn.Module
    tokenizer: object
    model_name: str
    pretrained: str
    device: torch.device
    dtype: torch.dtype = torch.float32
    # per instance (init=False): a copy made with dataclasses.replace, e.g. on another device,
    # starts empty instead of sharing tensors that live on the original's device
    _pos_cache: dict[int, torch.Tensor] = field(default_factory=dict, init=False, repr=False)
    _fingerprint: str | None = field(default=None, init=False, repr=False)
    _full_fingerprint: str | None = field(default=None, init=False, repr=False)

    @property
    def patch_size(self) -> int:
        return int(self.model.visual.conv1.kernel_size[0])

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.proj.shape[1])

    @property
    def weights_id(self) -> str:
        """A short fingerprint of the weights themselves (tag, file or random init alike).

        Caches are keyed by it, so other weights never reuse stale text embeddings.
        """
        if self._fingerprint is None:
            h = hashlib.sha256(self.model_name.encode())
            m = self.model
            for t in (m.text_projection, m.positional_embedding, m.ln_final.weight, m.visual.proj,
                      m.token_embedding.weight[:256], m.visual.conv1.weight.flatten()[:4096]):
                h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    @property
    def weights_fingerprint(self) -> str:
        """The full fingerprint of every parameter and buffer (model.fingerprint); what reference
        banks record. About 0.5 s for ViT-B-16-plus-240 on 2 cores, then cached."""
        from .fingerprint import weights_fingerprint

        if self._full_fingerprint is None:
            self._full_fingerprint = weights_fingerprint(self.model)
        return self._full_fingerprint

    def _autocast(self):
        # Autocast on the backbone's own device type: CUDA, or CPU for --precision bf16 (and for
        # the tests and bench/bench_precision.py, which also run fp16 through this path on CPU).
        if self.dtype != torch.float32:
            return torch.autocast(self.device.type, dtype=self.dtype)
        return torch.autocast(self.device.type, enabled=False)

    def _pos_embed(self, grid: int) -> torch.Tensor:
        if grid not in self._pos_cache:
            self._pos_cache[grid] = resample_pos_embed(self.model.visual.positional_embedding.detach(), grid)
        return self._pos_cache[grid]

    def check_scale(self, scale: int) -> None:
        if scale <= 0 or scale % self.patch_size:
            raise UsageError(f"scale {scale} is not a positive multiple of the patch size {self.patch_size}")

    @property
    def max_batch_tokens(self) -> int:
        """Tokens per forward chunk. On CPU a bigger batch is no faster, so a batch is run in
        chunks of about one 896-px image (3137 tokens) to keep memory flat in batch size; on a
        GPU, chunks of up to 64k tokens (e.g. 20 images at 896 px) keep it busy."""
        return 65536 if self.device.type == "cuda" else 4096

    def encode_images(
        self,
        pixels: torch.Tensor,
        want_cls: bool = True,
        want_clip: bool = True,
        want_gem: bool = True,
        gem_iterations: int = 1,
    ) -> ImageEmbeddings:
        """Embeddings of a batch at one scale. pixels: (B, 3, s, s) from `preprocess`."""
        tokens = (pixels.shape[-1] // self.patch_size) ** 2 + 1
        per_chunk = max(1, self.max_batch_tokens // tokens)
        if pixels.shape[0] <= per_chunk:
            return self._encode_chunk(pixels, want_cls, want_clip, want_gem, gem_iterations)
        parts = [self._encode_chunk(pixels[i : i + per_chunk], want_cls, want_clip, want_gem, gem_iterations)
                 for i in range(0, pixels.shape[0], per_chunk)]
        cat = lambda name: torch.cat([getattr(p, name) for p in parts]) if getattr(parts[0], name) is not None else None  # noqa: E731
        return ImageEmbeddings(scale=parts[0].scale, grid=parts[0].grid, cls=cat("cls"), clip=cat("clip"), gem=cat("gem"))

    @torch.inference_mode()
    def _encode_chunk(self, pixels, want_cls, want_clip, want_gem, gem_iterations) -> ImageEmbeddings:
        visual = self.model.visual
        scale = pixels.shape[-1]
        self.check_scale(scale)
        grid = scale // self.patch_size
        blocks = visual.transformer.resblocks
        first_gem = len(blocks) - GEM_DEPTH
        with self._autocast():
            x = self._stem(pixels, grid)
            # The GEM path only needs blocks' ln_1(x); the normal path's last output is needed
            # only for CLS/CLIP tokens.
            need_normal_out = want_cls or want_clip
            x_gem = None
            for i, block in enumerate(blocks):
                if i < first_gem or not want_gem:
                    x = gem.normal_block(block, x)
                    continue
                if x_gem is None:
                    x_gem = x
                last = i == len(blocks) - 1
                x, x_gem = gem.gem_block(block, x, x_gem, gem_iterations, run_normal=need_normal_out or not last)
            out = ImageEmbeddings(scale=scale, grid=grid)
            if need_normal_out:
                tokens = visual.ln_post(x) @ visual.proj
                tokens = F.normalize(tokens.float(), dim=-1)
                out.cls = tokens[:, 0] if want_cls else None
                out.clip = tokens[:, 1:] if want_clip else None
            if want_gem:
                gem_tokens = F.normalize((visual.ln_post(x_gem) @ visual.proj).float(), dim=-1)
                out.gem = gem_tokens[:, 1:]
        return out

    def _stem(self, pixels: torch.Tensor, grid: int) -> torch.Tensor:
        """Patch embedding, CLS token, positional embedding and ln_pre: the first block's input."""
        visual = self.model.visual
        x = visual.conv1(pixels.to(self.device, visual.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # (B, g*g, C)
        cls_tok = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls_tok, x], dim=1) + self._pos_embed(grid).to(x.dtype)
        return visual.ln_pre(visual.patch_dropout(x))

    @torch.inference_mode()
    def encode_layers(self, pixels: torch.Tensor, layers: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """For methods that read intermediate blocks (MuSc): the L2-normalised CLIP CLS embedding
        (B, D) and the patch tokens after each 0-based block in `layers`, before ln_post,
        (B, len(layers), g*g, width) in float32. Run in chunks as `encode_images`."""
        depth = len(self.model.visual.transformer.resblocks)
        if not layers or any(not 0 <= l < depth for l in layers):
            raise UsageError(f"layers {list(layers)}: each must be a block index in 0..{depth - 1}")
        self.check_scale(pixels.shape[-1])
        grid = pixels.shape[-1] // self.patch_size
        per_chunk = max(1, self.max_batch_tokens // (grid * grid + 1))
        cls_parts, token_parts = [], []
        visual = self.model.visual
        for start in range(0, pixels.shape[0], per_chunk):
            with self._autocast():
                x = self._stem(pixels[start : start + per_chunk], grid)
                kept: dict[int, torch.Tensor] = {}
                for i, block in enumerate(visual.transformer.resblocks):
                    x = gem.normal_block(block, x)
                    if i in layers:
                        kept[i] = x[:, 1:].float()
                cls_parts.append(F.normalize((visual.ln_post(x[:, 0]) @ visual.proj).float(), dim=-1))
            token_parts.append(torch.stack([kept[l] for l in layers], dim=1))
        return torch.cat(cls_parts), torch.cat(token_parts)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Texts -> (T, D) L2-normalised embeddings, as open_clip's encode_text.

        The causal mask means the end-of-text token never sees padding, so each batch runs at
        the length of its longest text instead of the full 77-token context; texts are sorted
        by length so batches are tight.
        """
        if not texts:
            return torch.empty(0, self.embed_dim)
        m = self.model
        tokens = self.tokenizer(texts)  # (T, 77)
        lengths = tokens.argmax(dim=-1) + 1  # end-of-text is the highest token id
        order = torch.argsort(lengths, descending=True)
        out = torch.empty(len(texts), self.embed_dim)
        with self._autocast():
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                length = int(lengths[idx].max())
                ids = tokens[idx, :length].to(self.device)
                x = m.token_embedding(ids) + m.positional_embedding[:length]
                x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
                x = m.ln_final(x)
                x = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)] @ m.text_projection
                out[idx] = F.normalize(x.float(), dim=-1).cpu()
        return out


def load_backbone(
    model_name: str = DEFAULT_MODEL,
    pretrained: str = DEFAULT_PRETRAINED,
    device: str = "auto",
    precision: str = "fp32",
    seed: int = 0,
) -> Backbone:
    """Load an open_clip ViT by name with a pretrained tag, a local checkpoint path or "none".

    "none" gives random weights (seeded with `seed`): identical computation and speed, no
    meaningful accuracy; for tests and benchmarks without network.
    """
    import open_clip

    dev = resolve_device(device)
    dtype = _precision_dtype(precision, dev)
    with warnings.catch_warnings(), _logging_off():
        warnings.simplefilter("ignore")
        if pretrained == RANDOM_WEIGHTS:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = _create_model(model_name, pretrained)
        else:
            model = _create_model(model_name, pretrained)
    _check_supported(model)
    model = model.to(dev).eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    return Backbone(model=model, tokenizer=tokenizer, model_name=model_name, pretrained=pretrained, device=dev, dtype=dtype)


def preprocess_batch(images: Sequence[Image.Image], size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Images -> (B, 3, size, size) normalised tensor, as `preprocess` for each; resized in threads."""
    return preprocess_scales(images, (size,), device)[size]


def preprocess_scales(images: Sequence[Image.Image], sizes: Iterable[int],
                      device: torch.device | str | None = None) -> dict[int, torch.Tensor]:
    """{size: (B, 3, size, size)} for every size, equal to `preprocess` per image and size.

    PIL's resize releases the GIL, so the (image, size) resizes run in a thread pool: on a GPU
    the host side, not the model, would otherwise bound throughput (about 30 ms of resizing per
    1024-px image for 240/448/896 on one core). Normalisation runs on `device`."""
    images, sizes = list(images), sorted(set(sizes))
    jobs = [(im, s) for s in sizes for im in images]
    resized = list(_resize_pool().map(lambda job: resize_rgb(*job), jobs)) if len(jobs) > 1 else [resize_rgb(*j) for j in jobs]
    n = len(images)
    return {s: normalize_pixels(torch.stack(resized[k * n : (k + 1) * n]), device) for k, s in enumerate(sizes)}


_POOL: ThreadPoolExecutor | None = None


def _resize_pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1), thread_name_prefix="fade-resize")
    return _POOL


def _forget_pool_in_child() -> None:
    global _POOL  # a forked child has none of the parent's threads
    _POOL = None


os.register_at_fork(after_in_child=_forget_pool_in_child)
