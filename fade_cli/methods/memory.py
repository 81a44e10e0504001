"""Memory bank: vision guidance by nearest-neighbour patch distance (FADE sec. 3.3, Fig. 2c-d).

Score of a query patch f against a bank R of L2-normalised patch embeddings:
    M_p = ½ (1 − <f, r_k>)   where r_k is f's k-th most similar bank patch.
k = 1 against reference images (k-shot); k = 2 against the query's own patches (0-shot),
because the nearest is the patch itself.

Banks hold one (M, D) matrix per scale; they are saved without pickle: an `.npz` read with
allow_pickle=False, holding float arrays and the metadata as a JSON string.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.io import atomic_write
from ..errors import MemoryBankError

BANK_FORMAT = 1


def knn_distance(query: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk: int = 4096) -> torch.Tensor:
    """½(1 − cos) from each query row to its k-th nearest bank row.

    query: (Q, D), bank: (M, D), both L2-normalised. Returns (Q,). The similarity matrix is
    built `chunk` query rows at a time so memory stays flat in Q.
    """
    if bank.shape[0] < k:
        raise MemoryBankError(f"memory bank has {bank.shape[0]} patches; need at least {k}")
    out = torch.empty(query.shape[0], dtype=query.dtype, device=query.device)
    for start in range(0, query.shape[0], chunk):
        sim = query[start : start + chunk] @ bank.T
        kth = sim.topk(k, dim=1).values[:, k - 1]
        out[start : start + chunk] = 0.5 * (1.0 - kth)
    return out


def self_knn_distance(patches: torch.Tensor, k: int = 2) -> torch.Tensor:
    """0-shot vision guidance: each image's patches against its own patches. (B, N, D) -> (B, N)."""
    return torch.stack([knn_distance(p, p, k) for p in patches])


@dataclass
class MemoryBank:
    """Reference patch embeddings per scale, with what produced them."""

    patches: dict[int, torch.Tensor]  # scale -> (M, D), L2-normalised
    meta: dict = field(default_factory=dict)  # model, weights_id, weights_fingerprint, feature, class, images, fade version
    # arrays a higher layer keeps with the bank, saved and loaded as they are (decisions: the
    # references' leave-one-out normal scores); never named scale_*, array_* or meta_json
    extra_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # other per-image tensors a method keeps with its bank (rows in reference order, joined by
    # `concat`), e.g. the DINOv2 method's raw tokens for its foreground PCA; saved as array_*
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def has_fingerprint(self) -> bool:
        """False for banks written before the full weights fingerprint was recorded."""
        return "weights_fingerprint" in self.meta

    def check_compatible(self, backbone, scales, feature: str) -> None:
        """Refuse a bank built with other weights, without these scales, or of another feature kind.

        Weights are compared by the full fingerprint; a bank without one (older fade) by the
        partial `weights_id` it recorded, which misses changes outside the tensors it samples."""
        meta = self.meta
        if meta.get("model") != backbone.model_name or meta.get("weights_id") != backbone.weights_id:
            raise MemoryBankError(
                f"reference bank was built with {meta.get('model')} (weights {meta.get('weights_id')}), "
                f"not {backbone.model_name} (weights {backbone.weights_id})"
            )
        if self.has_fingerprint and meta["weights_fingerprint"] != backbone.weights_fingerprint:
            raise MemoryBankError(
                f"reference bank was built with other weights of {backbone.model_name} (fingerprint "
                f"{meta['weights_fingerprint'][:16]}, this model's is {backbone.weights_fingerprint[:16]}); "
                f"rebuild it with `fade bank build` and these weights"
            )
        if meta.get("feature") != feature:  # first: a bank of another kind has other keys too
            raise MemoryBankError(f"reference bank holds {meta.get('feature')} patches; this run's vision feature is {feature}")
        missing = sorted(set(scales) - set(self.patches))
        if missing:
            raise MemoryBankError(f"reference bank has no patches at scale(s) {missing} (it has {sorted(self.patches)})")

    def score(self, scale: int, query: torch.Tensor) -> torch.Tensor:
        """(B, N, D) query patches at `scale` -> (B, N) nearest-neighbour distances (k = 1)."""
        if scale not in self.patches:
            raise MemoryBankError(f"memory bank has no patches at scale {scale} (it has {sorted(self.patches)})")
        bank = self.patches[scale].to(query.device, query.dtype)
        return torch.stack([knn_distance(q, bank, 1) for q in query])

    @classmethod
    def concat(cls, banks: list["MemoryBank"]) -> "MemoryBank":
        """One bank holding the patches of several (same model, scales, feature)."""
        first = banks[0]
        for b in banks[1:]:
            if sorted(b.patches) != sorted(first.patches) or b.meta.get("feature") != first.meta.get("feature"):
                raise MemoryBankError("cannot join reference banks of different scales or features")
            if sorted(b.arrays) != sorted(first.arrays):
                raise MemoryBankError("cannot join reference banks holding different arrays")
        patches = {s: torch.cat([b.patches[s] for b in banks]) for s in first.patches}
        arrays = {k: torch.cat([b.arrays[k] for b in banks]) for k in first.arrays}
        meta = dict(first.meta, n_images=sum(int(b.meta.get("n_images", 1)) for b in banks))
        return cls(patches=patches, meta=meta, arrays=arrays)

    def save(self, path: Path) -> None:
        """Write atomically: a half-written bank never appears under `path`."""
        arrays = {f"scale_{s}": t.detach().cpu().float().numpy() for s, t in self.patches.items()}
        arrays.update({f"array_{k}": t.detach().cpu().numpy() for k, t in self.arrays.items()})
        meta = dict(self.meta, format=BANK_FORMAT, scales=sorted(self.patches))
        arrays["meta_json"] = np.array(json.dumps(meta))
        arrays.update({k: v for k, v in self.extra_arrays.items() if not k.startswith(("scale_", "array_")) and k != "meta_json"})
        atomic_write(path, lambda fh: np.savez(fh, **arrays))

    @classmethod
    def load(cls, path: Path) -> "MemoryBank":
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta_json"]))
                patches = {int(k.removeprefix("scale_")): torch.from_numpy(npz[k].copy()) for k in npz.files if k.startswith("scale_")}
                extra = {k: np.array(npz[k]) for k in npz.files if not k.startswith(("scale_", "array_")) and k != "meta_json"}
                arrays = {k.removeprefix("array_"): torch.from_numpy(npz[k].copy()) for k in npz.files if k.startswith("array_")}
        except FileNotFoundError:
            raise MemoryBankError(f"{path}: no such file") from None
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise MemoryBankError(f"{path}: not a fade reference bank ({exc.__class__.__name__})") from None
        if meta.get("format") != BANK_FORMAT:
            raise MemoryBankError(f"{path}: bank format {meta.get('format')} is not supported by this fade (reads {BANK_FORMAT})")
        return cls(patches=patches, meta=meta, extra_arrays=extra, arrays=arrays)
