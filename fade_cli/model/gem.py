"""GEM: the Grounding Everything Module's self-self attention path (Bousselham et al., used by FADE).

FADE (sec. 3.2) takes patch embeddings from a parallel "GEM path" through the last blocks of
the CLIP ViT. In each of those blocks, with that block's own qkv projection of ln_1(x) of the
*normal* path:

    t = mean over tokens of ||ln_1(x)||_2 * d_h^-1/2              (one inverse temperature per image)
    for z in (q, k, v):                                            ("self-self" attention)
        repeat `iterations` times:  z <- softmax(t * ẑ ẑᵀ) ẑ       (ẑ = z / ||z||)
        out_z = softmax(t * ẑ ẑᵀ) v
    out = out-projection(mean(out_q, out_k, out_v))
    x_gem <- x_gem + ls_1(out)                                     (no MLP on the GEM path)

while the normal path runs the block unchanged. This module implements that with fused
attention (`scaled_dot_product_attention`): softmax(t·a bᵀ) c == sdpa(t·a, b, c, scale=1).
The three self-self products of a block run as one batched call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["gem_block", "normal_block", "self_self_attention", "split_heads", "merge_heads"]


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C/heads)."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads*d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _qkv(attn: nn.MultiheadAttention, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The block's own q, k, v of h: each (B, heads, N, d_h)."""
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.chunk(3, dim=-1)
    return split_heads(q, attn.num_heads), split_heads(k, attn.num_heads), split_heads(v, attn.num_heads)


def self_self_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inv_temp: torch.Tensor, iterations: int = 1
) -> torch.Tensor:
    """GEM's q-q, k-k and v-v attention, averaged.

    q, k, v: (B, H, N, d); inv_temp: (B,) one inverse temperature per image.
    Returns (B, H, N, d).
    """
    b = q.shape[0]
    z = torch.cat([q, k, v], dim=0)  # (3B, H, N, d): the three products in one call
    t = inv_temp.repeat(3).view(3 * b, 1, 1, 1).to(z.dtype)
    for _ in range(iterations):
        zn = F.normalize(z, dim=-1)
        z = F.scaled_dot_product_attention(zn * t, zn, zn, scale=1.0)
    zn = F.normalize(z, dim=-1)
    out = F.scaled_dot_product_attention(zn * t, zn, v.repeat(3, 1, 1, 1), scale=1.0)
    return out.view(3, b, *out.shape[1:]).mean(dim=0)


def _attention_out(attn: nn.MultiheadAttention, heads_out: torch.Tensor) -> torch.Tensor:
    return F.linear(merge_heads(heads_out), attn.out_proj.weight, attn.out_proj.bias)


def normal_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An open_clip ResidualAttentionBlock (no mask) with fused attention; x: (B, N, C)."""
    q, k, v = _qkv(block.attn, block.ln_1(x))
    x = x + block.ls_1(_attention_out(block.attn, F.scaled_dot_product_attention(q, k, v)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def gem_block(
    block: nn.Module,
    x: torch.Tensor,
    x_gem: torch.Tensor,
    iterations: int = 1,
    run_normal: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One block of both paths. x, x_gem: (B, N, C). Returns the new (x, x_gem).

    run_normal=False skips the normal path's own output (its attention and MLP) when no
    later block or output needs it; the GEM path only needs ln_1(x) of the incoming x.
    """
    h = block.ln_1(x)
    q, k, v = _qkv(block.attn, h)
    d_h = q.shape[-1]
    inv_temp = h.norm(dim=-1).mean(dim=-1) * d_h**-0.5  # (B,)
    gem_out = _attention_out(block.attn, self_self_attention(q, k, v, inv_temp, iterations))
    x_gem = x_gem + block.ls_1(gem_out)
    if run_normal:
        x = x + block.ls_1(_attention_out(block.attn, F.scaled_dot_product_attention(q, k, v)))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, x_gem
