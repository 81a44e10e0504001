"""ALFA's fine-grained aligner (sec. 4.3): local window embeddings and a global-to-local projection
of the prompt embeddings, fitted per window from the last layer's values.

How the paper's ambiguities are resolved here (docs/methods.md repeats this):
- Local view x ⊙ m_ij of an r×r window: the encoder runs on the CLS token plus the window's
  patch tokens only (WinCLIP's token-subset form of masking; the masked-out patches do not take
  part at all). All windows of all images run as one batch of short sequences, in chunks.
  Windows slide with stride 1 over the patch grid of the global image (15×15 at 240 px).
- Value matrices: the last block's values, taken to the joint embedding space along CLIP's
  value path (out-projection, ln_post, proj; L2-normalised) — MaskCLIP's dense features — for
  the CLS and window tokens, once in the global pass (U) and once in the window's own pass (T).
- W_ij (D×D, in the joint space, so it applies to text embeddings) solves the ridge problem
  min ||U W − T||² + λ||W − I||², i.e. the smallest change of the identity that maps the
  tokens' global values onto their local values: W = I + Uᵀ(U Uᵀ + λI)⁻¹(T − U). Only r²+1
  equations per window, so the n×n form is cheap; λ = 0.1.
- Projected prompts F_TL,ij = F_TG W_ij, L2-normalised; local map (eq. 11) = anomalous mass of
  softmax(<f_I,ij, F_TL,ij>/τ) with CLIP's τ = 0.01.
- Windows → patches: a patch's score is the harmonic mean of the scores of the windows that
  contain it (WinCLIP's aggregation); window sizes are fused by a harmonic mean too (ALFA).
- Few-shot window bank (WinCLIP+'s window-level memory, an option of ALFA's few-shot term):
  the references' window embeddings f_I,ij per size r; a query window's distance is
  ½(1 − cos) to its nearest reference window of the same size, taken to patches and fused
  over sizes exactly as S_L is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..model import gem

RIDGE = 0.1
TEMPERATURE = 0.01
WINDOW_FEATURE = "window"  # memory-bank feature kind: window embeddings (bank keys are window sizes)
_EPS = 1e-6


def window_indices(grid: int, r: int) -> torch.Tensor:
    """(W, r*r) row-major patch indices of every r×r window at stride 1; W = (grid − r + 1)²."""
    if not 1 <= r <= grid:
        raise ValueError(f"window size {r} does not fit a {grid}×{grid} patch grid")
    rows = torch.arange(grid - r + 1)
    starts = (rows[:, None] * grid + rows[None, :]).reshape(-1)  # top-left patch of each window
    offsets = (torch.arange(r)[:, None] * grid + torch.arange(r)[None, :]).reshape(-1)
    return starts[:, None] + offsets[None, :]


@dataclass
class AlignerFeatures:
    """One forward's worth of what ALFA needs, for a batch of B images at one size."""

    grid: int
    cls: torch.Tensor  # (B, D) global image embedding f(x)
    patches: torch.Tensor  # (B, N, D) CLIP patch embeddings (few-shot memory bank)
    values: torch.Tensor  # (B, N+1, D) last-layer value-path embeddings, global pass
    local: dict[int, torch.Tensor] = field(default_factory=dict)  # r -> (B, W, D) f_I,ij
    local_values: dict[int, torch.Tensor] = field(default_factory=dict)  # r -> (B, W, r²+1, D)


def _run_blocks(backbone, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All blocks on token sequences x (S, n, C): (final tokens, last block's value path (S, n, C))."""
    blocks = backbone.model.visual.transformer.resblocks
    for block in blocks[:-1]:
        x = gem.normal_block(block, x)
    last = blocks[-1]
    q, k, v = gem._qkv(last.attn, last.ln_1(x))
    value_path = F.linear(gem.merge_heads(v), last.attn.out_proj.weight, last.attn.out_proj.bias)
    x = x + last.ls_1(F.linear(gem.merge_heads(F.scaled_dot_product_attention(q, k, v)),
                               last.attn.out_proj.weight, last.attn.out_proj.bias))
    x = x + last.ls_2(last.mlp(last.ln_2(x)))
    return x, value_path


def _embed(backbone, tokens: torch.Tensor) -> torch.Tensor:
    visual = backbone.model.visual
    return F.normalize((visual.ln_post(tokens) @ visual.proj).float(), dim=-1)


@torch.inference_mode()
def encode_with_windows(backbone, pixels: torch.Tensor, windows: tuple[int, ...]) -> AlignerFeatures:
    """Global and window embeddings of a batch (B, 3, s, s) from `preprocess`."""
    visual = backbone.model.visual
    size = pixels.shape[-1]
    backbone.check_scale(size)
    grid = size // backbone.patch_size
    with backbone._autocast():
        x = visual.conv1(pixels.to(backbone.device, visual.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        cls_tok = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x0 = visual.ln_pre(torch.cat([cls_tok, x], dim=1) + backbone._pos_embed(grid).to(x.dtype))  # (B, N+1, C)
        out, value_path = _run_blocks(backbone, x0)
        tokens = _embed(backbone, out)
        feats = AlignerFeatures(grid=grid, cls=tokens[:, 0], patches=tokens[:, 1:], values=_embed(backbone, value_path))
        b = x0.shape[0]
        for r in windows:
            idx = window_indices(grid, r).to(x0.device) + 1  # token positions (CLS is 0)
            n_win, n_tok = idx.shape[0], idx.shape[1] + 1
            take = torch.cat([torch.zeros(n_win, 1, dtype=idx.dtype, device=idx.device), idx], dim=1)  # (W, n)
            seqs = x0[:, take.reshape(-1)].reshape(b * n_win, n_tok, -1)  # each window's CLS + patches
            per_chunk = max(1, backbone.max_batch_tokens // n_tok)
            cls_parts, value_parts = [], []
            for s in range(0, seqs.shape[0], per_chunk):
                o, vp = _run_blocks(backbone, seqs[s : s + per_chunk])
                cls_parts.append(_embed(backbone, o[:, 0]))
                value_parts.append(_embed(backbone, vp))
            feats.local[r] = torch.cat(cls_parts).view(b, n_win, -1)
            feats.local_values[r] = torch.cat(value_parts).view(b, n_win, n_tok, -1)
    return feats


def window_value_pairs(feats: AlignerFeatures, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, T): each window's CLS + patch values in the global pass and in its own pass, (B, W, n, D)."""
    idx = window_indices(feats.grid, r).to(feats.values.device) + 1
    take = torch.cat([torch.zeros(idx.shape[0], 1, dtype=idx.dtype, device=idx.device), idx], dim=1)
    u = feats.values[:, take]  # (B, W, n, D)
    return u, feats.local_values[r]


def project_text(text: torch.Tensor, u: torch.Tensor, t: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """F_TL = F_TG · W per window, W = I + Uᵀ(U Uᵀ + λI)⁻¹(T − U); L2-normalised.

    text: (B, S, D) prompt embeddings per image (S states); u, t: (B, W, n, D). -> (B, W, S, D).
    """
    n = u.shape[-2]
    gram = u @ u.transpose(-1, -2) + ridge * torch.eye(n, dtype=u.dtype, device=u.device)  # (B, W, n, n)
    solved = torch.linalg.solve(gram, t - u)  # (B, W, n, D)
    coeff = torch.einsum("bsd,bwnd->bwsn", text, u)  # F_TG Uᵀ
    return F.normalize(text[:, None] + coeff @ solved, dim=-1)


def local_scores(local: torch.Tensor, text: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """Eq. 11: anomalous softmax mass of windows (B, W, D) against [normal, anomalous] text,
    either per window (B, W, 2, D) or shared (B, 2, D). -> (B, W)."""
    if text.dim() == 3:
        logits = torch.einsum("bwd,bsd->bws", local, text)
    else:
        logits = torch.einsum("bwd,bwsd->bws", local, text)
    return torch.softmax(logits / temperature, dim=-1)[..., 1]


def windows_to_patches(scores: torch.Tensor, grid: int, r: int) -> torch.Tensor:
    """(B, W) window scores -> (B, grid, grid): per patch, the harmonic mean over its windows."""
    idx = window_indices(grid, r).to(scores.device)  # (W, r²)
    b = scores.shape[0]
    inv = (1.0 / scores.clamp_min(_EPS))[:, :, None].expand(b, *idx.shape).reshape(b, -1)
    total = torch.zeros(b, grid * grid, dtype=scores.dtype, device=scores.device).index_add_(1, idx.reshape(-1), inv)
    count = torch.zeros(grid * grid, dtype=scores.dtype, device=scores.device).index_add_(
        0, idx.reshape(-1), torch.ones(idx.numel(), dtype=scores.dtype, device=scores.device))
    return (count / total).view(b, grid, grid)


def harmonic_mean(maps: list[torch.Tensor]) -> torch.Tensor:
    return len(maps) / torch.stack([1.0 / m.clamp_min(_EPS) for m in maps]).sum(dim=0)


def window_feature(image_size: int) -> str:
    """The bank feature name of window embeddings at one image size (a bank fits one size only)."""
    return f"{WINDOW_FEATURE}@{image_size}"


def window_bank_entries(backbone, pixels: torch.Tensor, windows: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """Reference window embeddings of a batch (B, 3, s, s): r -> (B·W, D)."""
    feats = encode_with_windows(backbone, pixels, windows)
    return {r: feats.local[r].reshape(-1, feats.local[r].shape[-1]) for r in windows}


def window_distance_map(feats: AlignerFeatures, bank, windows: tuple[int, ...]) -> torch.Tensor:
    """(B, grid, grid): per size r, each query window's nearest-reference distance (bank keyed by r),
    to patches by the harmonic mean of covering windows; sizes fused by a harmonic mean."""
    maps = [windows_to_patches(bank.score(r, feats.local[r]), feats.grid, r) for r in windows]
    return harmonic_mean(maps) if len(maps) > 1 else maps[0]
