"""Direct, slow, obviously-correct implementations of the papers' formulas, for tests only.

Written from METHODS.md / the papers, not from fade_cli: explicit softmax of explicit score
matrices, per-head and per-path loops, Python loops for interpolation and nearest neighbours.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def softmax(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def l2n(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def gem_tokens(model, pixels: torch.Tensor, depth: int = 6, iterations: int = 1):
    """CLIP and GEM tokens (all tokens, after ln_post and proj, L2-normalised), one image.

    pixels: (1, 3, s, s). Returns (clip (N, D), gem (N, D)) with the CLS token first.
    """
    v = model.visual
    p = v.conv1.kernel_size[0]
    g = pixels.shape[-1] // p
    x = v.conv1(pixels)[0].reshape(v.conv1.out_channels, -1).T  # (g*g, C)
    pos = v.positional_embedding
    g0 = int(math.isqrt(pos.shape[0] - 1))
    if g != g0:
        grid = pos[1:].T.reshape(1, -1, g0, g0)
        grid = torch.nn.functional.interpolate(grid, size=(g, g), mode="bicubic", antialias=True)
        pos = torch.cat([pos[:1], grid.reshape(-1, g * g).T])
    x = torch.cat([v.class_embedding[None], x]) + pos
    x = v.ln_pre(x)
    blocks = list(v.transformer.resblocks)
    x_gem = None
    for i, blk in enumerate(blocks):
        a = blk.attn
        heads = a.num_heads
        h = blk.ln_1(x)
        qkv = h @ a.in_proj_weight.T + a.in_proj_bias
        q, k, val = qkv.chunk(3, dim=-1)
        d_h = q.shape[-1] // heads
        per_head = lambda t: [t[:, j * d_h : (j + 1) * d_h] for j in range(heads)]  # noqa: E731
        qs, ks, vs = per_head(q), per_head(k), per_head(val)
        normal = torch.cat([softmax(qs[j] @ ks[j].T / math.sqrt(d_h)) @ vs[j] for j in range(heads)], dim=-1)
        normal = normal @ a.out_proj.weight.T + a.out_proj.bias
        if i >= len(blocks) - depth:
            if x_gem is None:
                x_gem = x.clone()
            t = h.norm(dim=-1).mean() / math.sqrt(d_h)
            outs = []
            for j in range(heads):
                path_outs = []
                for z in (qs[j], ks[j], vs[j]):
                    for _ in range(iterations):
                        zn = l2n(z)
                        z = softmax(t * zn @ zn.T) @ zn
                    zn = l2n(z)
                    path_outs.append(softmax(t * zn @ zn.T) @ vs[j])
                outs.append((path_outs[0] + path_outs[1] + path_outs[2]) / 3)
            gem_out = torch.cat(outs, dim=-1) @ a.out_proj.weight.T + a.out_proj.bias
            x_gem = x_gem + gem_out  # no MLP on the GEM path
        x = x + normal
        x = x + blk.mlp(blk.ln_2(x))
    clip = l2n(v.ln_post(x) @ v.proj)
    gem = l2n(v.ln_post(x_gem) @ v.proj) if x_gem is not None else None
    return clip, gem


def language_prob(f: torch.Tensor, h_normal: torch.Tensor, h_anom: torch.Tensor) -> torch.Tensor:
    """softmax(100 · [f·h−, f·h+])[1], literally."""
    logits = torch.stack([100.0 * (f @ h_normal), 100.0 * (f @ h_anom)], dim=-1)
    return softmax(logits)[..., 1]


def bilinear_resize(m: np.ndarray, out: int) -> np.ndarray:
    """cv2.resize INTER_LINEAR semantics, pixel by pixel: half-pixel centres, edge clamping."""
    h, w = m.shape
    res = np.zeros((out, out))
    for y in range(out):
        sy = min(max((y + 0.5) * h / out - 0.5, 0.0), h - 1)
        y0 = int(math.floor(sy)); y1 = min(y0 + 1, h - 1); fy = sy - y0
        for x in range(out):
            sx = min(max((x + 0.5) * w / out - 0.5, 0.0), w - 1)
            x0 = int(math.floor(sx)); x1 = min(x0 + 1, w - 1); fx = sx - x0
            res[y, x] = ((1 - fy) * ((1 - fx) * m[y0, x0] + fx * m[y0, x1])
                         + fy * ((1 - fx) * m[y1, x0] + fx * m[y1, x1]))
    return res


def kth_nn_distance(query: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """½(1 − cos) to the k-th nearest bank row, by sorting every distance."""
    out = np.zeros(len(query))
    for i, q in enumerate(query):
        d = sorted(0.5 * (1 - float(q @ r)) for r in bank)
        out[i] = d[k - 1]
    return out


# ---- ALFA -------------------------------------------------------------------------------------
def contextual_score(d: float, normal: list[float], anomalous: list[float], k: float = 1.0) -> float:
    """ALFA eq. 4 for one prompt with similarity d, straight from the paper."""

    def dist(x, lo, hi):
        return max(0.0, max(lo - x, x - hi))

    gap = abs(dist(d, min(normal), max(normal)) - dist(d, min(anomalous), max(anomalous)))
    return gap / (gap + math.exp(-k * gap))


def overlap_keep(d: float, normal: list[float], anomalous: list[float]) -> bool:
    """FiLo++ runtime prompt filtering: drop a prompt whose distance lies in the overlap interval."""
    lo, hi = max(min(normal), min(anomalous)), min(max(normal), max(anomalous))
    return not (lo <= d <= hi)


def local_window_embedding(model, pixels: torch.Tensor, rows: range, cols: range) -> torch.Tensor:
    """One window's local embedding: open_clip's own transformer on CLS + the window's patch tokens."""
    v = model.visual
    g = pixels.shape[-1] // v.conv1.kernel_size[0]
    x = v.conv1(pixels)[0].reshape(v.conv1.out_channels, -1).T
    x = v.ln_pre(torch.cat([v.class_embedding[None], x]) + v.positional_embedding)
    keep = [0] + [1 + i * g + j for i in rows for j in cols]
    out = v.transformer(x[keep][None])[0]
    return l2n(v.ln_post(out[0]) @ v.proj)


def ridge_projection(u: torch.Tensor, t: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin_W ||U W − T||² + λ||W − I||², by the D×D normal equations (U: n×D)."""
    d = u.shape[1]
    eye = torch.eye(d, dtype=u.dtype)
    return torch.linalg.solve(u.T @ u + lam * eye, u.T @ t + lam * eye)


def harmonic_window_map(scores: dict[tuple[int, int], float], grid: int, r: int) -> np.ndarray:
    """Per patch, the harmonic mean of the scores of the r×r windows (keyed by top-left) covering it."""
    out = np.zeros((grid, grid))
    for i in range(grid):
        for j in range(grid):
            covering = [s for (a, b), s in scores.items() if a <= i < a + r and b <= j < b + r]
            out[i, j] = len(covering) / sum(1.0 / s for s in covering)
    return out
