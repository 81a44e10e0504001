"""Mixed precision (--precision fp16 / bf16 autocast) on CPU, where it can be tested without a GPU.

`load_backbone` makes fp16 backbones only on CUDA (the CLI refuses them on CPU, checked last
here; bf16 runs on CPU too), and `Backbone._autocast` autocasts on the backbone's device type, so a
Backbone sharing the tiny model with dtype bf16 / fp16 runs the very same autocast code path on
CPU. Each method's maps and scores must stay close to fp32, and a dispatch-level record of the
matmul-like ops shows that the reduced-precision run really computed in that dtype (and the
fp32 run in fp32 only), so the closeness cannot hold vacuously.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fade_cli.methods.alfa import AlfaConfig, AlfaPipeline
from fade_cli.methods.fade import FadeConfig
from fade_cli.methods.filo import resolve_switches
from fade_cli.methods.fade import FadePipeline
from fade_cli.methods.base import build_reference_bank
from fade_cli.prompts.text import TextEncoderCache

from conftest import random_image
from helpers import ALFA, FAST, run

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}
TOL = 1e-2  # max |Δ| of maps and scores against fp32
# ALFA scores windows by softmax(<f, h>/τ) with τ = 0.01: bf16's 8-bit mantissa leaves the tiny
# model's embeddings ~5e-3 off, i.e. logits ~0.5 off, and maps/scores 1e-2 to 3e-2 off (fp16:
# ~2e-3). The aligner's head in fp32 does not help (the error is in the trunk): a real bf16 limit.
ALFA_BF16_TOL = 5e-2
# Vision multiplier 1 keeps the random-weight maps off the clamp at 1 (the default 80 saturates
# them all, and equal saturated maps would prove nothing).
SMALL = dict(cls_scale=32, seg_scales=(32, 64), seg_prompts=("winclip",), vision_multiplier=1.0)
CASES = ["fade-0shot", "fade-1shot", "alfa-0shot", "filo-0shot", "filo-1shot"]
MATMULS = {"linear", "mm", "addmm", "bmm", "baddbmm", "matmul", "convolution", "conv2d",
           "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
           "_scaled_dot_product_attention_math"}


class MatmulDtypes(TorchDispatchMode):
    """Records the dtypes of the floating tensor inputs of matmul-like aten ops, after autocast
    has cast them (the Python dispatch key runs below the autocast key)."""

    def __init__(self):
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in MATMULS:
            self.dtypes |= {a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()}
        return func(*args, **(kwargs or {}))


def reduced(backbone, dtype: torch.dtype):
    """The same model object, autocast to `dtype` (what --precision gives on CUDA)."""
    return dataclasses.replace(backbone, dtype=dtype)


def pipeline(backbone, case: str, cache_dir):
    """A pipeline for one case; the reference bank (1-shot) is embedded by the same backbone and
    each precision gets its own text cache, so text is encoded in that precision too."""
    method, shots = case.split("-")
    cache = TextEncoderCache(backbone, cache_dir)
    if method == "alfa":
        # alfa@1.0.0: with random weights the 2.0.0 bank's maps sit on the steep part of the
        # τ = 0.01 softmax, where bf16's ~1e-2 cosine error flips whole windows (max |Δ map| 0.997,
        # measured); this test is about the arithmetic, so it keeps the bank whose maps do not
        return AlfaPipeline.from_config(backbone, AlfaConfig(prompts=("alfa@1.0.0",)), "bottle", None, cache)
    config = FadeConfig(**SMALL)
    if method == "filo":
        config = dataclasses.replace(config, **resolve_switches(True))  # the `--method filo` preset
    bank = None
    if shots == "1shot":
        few = config.resolved(few_shot=True)
        bank = build_reference_bank(backbone, [random_image(30)], few.seg_scales, few.vision_feature)
    return FadePipeline.from_config(backbone, config, "bottle", bank, cache)


def run_case(backbone, case: str, cache_dir) -> tuple[torch.Tensor, torch.Tensor, set[torch.dtype]]:
    """(maps (B, G, G), scores (B,), matmul dtypes seen) for two test images."""
    images = [random_image(1), random_image(2, (40, 90))]
    with MatmulDtypes() as seen:
        results = pipeline(backbone, case, cache_dir)(images)
    return torch.stack([r.map for r in results]), torch.tensor([r.score for r in results]), seen.dtypes


def max_differences(tiny_backbone, case: str, precision: str, tmp_path) -> tuple[float, float]:
    """Runs fp32 and `precision`, checks both really ran in their dtype; (max |Δ map|, max |Δ score|)."""
    dtype = PRECISIONS[precision]
    maps32, scores32, seen32 = run_case(tiny_backbone, case, tmp_path / "fp32")
    maps, scores, seen = run_case(reduced(tiny_backbone, dtype), case, tmp_path / precision)
    assert seen32 == {torch.float32}
    assert dtype in seen, f"no {precision} matmul ran: autocast is off"
    assert float(maps32.max() - maps32.min()) > 0.05, "fp32 maps are flat: the comparison would prove nothing"
    assert not (torch.equal(maps, maps32) and torch.equal(scores, scores32)), "bit-identical to fp32"
    return float((maps - maps32).abs().max()), float((scores - scores32).abs().max())


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", CASES)
def test_reduced_precision_maps_and_scores_stay_close_to_fp32(tiny_backbone, tmp_path, case, precision):
    d_map, d_score = max_differences(tiny_backbone, case, precision, tmp_path)
    tol = ALFA_BF16_TOL if (case.startswith("alfa") and precision == "bf16") else TOL
    assert d_map <= tol and d_score <= tol, f"{case} {precision}: max |Δ map| {d_map:.2e}, |Δ score| {d_score:.2e}"


@pytest.mark.parametrize("precision", PRECISIONS)
def test_reduced_precision_text_embeddings_stay_close_to_fp32(tiny_backbone, precision):
    texts = ["a photo of a damaged bottle.", "a flawless bottle", "a scratch on the surface of a metal nut.",
             "a photo of a bottle with a crack at top left."]
    with MatmulDtypes() as seen32:
        h32 = tiny_backbone.encode_texts(texts, batch_size=3)
    with MatmulDtypes() as seen:
        h = reduced(tiny_backbone, PRECISIONS[precision]).encode_texts(texts, batch_size=3)
    assert seen32.dtypes == {torch.float32} and PRECISIONS[precision] in seen.dtypes
    assert h.dtype == torch.float32 and h.shape == h32.shape
    assert torch.allclose(h.norm(dim=-1), torch.ones(len(texts)), atol=1e-5)
    assert not torch.equal(h, h32)
    assert float((h - h32).abs().max()) <= TOL


def test_fp32_backbone_does_not_autocast(tiny_backbone):
    with tiny_backbone._autocast():
        assert not torch.is_autocast_enabled("cpu")
    with reduced(tiny_backbone, torch.bfloat16)._autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


@pytest.mark.parametrize("command", ["detect", "segment", "detect-alfa", "bank-build"])
def test_cli_refuses_fp16_on_cpu(capsys, monkeypatch, tmp_path, command):
    image = tmp_path / "a.png"
    random_image(1).save(image)
    args = {
        "detect": ["detect", str(image), *FAST],
        "segment": ["segment", str(image), "--out", str(tmp_path / "out"), *FAST],
        "detect-alfa": ["detect", str(image), *ALFA],
        "bank-build": ["bank", "build", str(image), "-o", str(tmp_path / "b.fadebank"), *FAST[:6], "--scales", "32,64"],
    }[command]
    code, stdout, stderr = run(capsys, monkeypatch, *args, "--precision", "fp16", cache=tmp_path / "cache")
    assert code == 2 and stdout == ""
    assert stderr.splitlines() == ["fade: error: --precision fp16 needs a CUDA device; on CPU use fp32 or bf16"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "b.fadebank").exists()


@pytest.mark.parametrize("method", ["fade", "alfa"])
def test_cli_runs_bf16_on_cpu_close_to_fp32_with_its_own_text_cache(capsys, monkeypatch, tmp_path, method):
    """--precision bf16 on CPU (fast with AVX512-BF16/AMX) scores close to fp32, and a warm fp32
    text cache is not reused for it: the cached text embeddings are per precision."""
    images = [tmp_path / f"{i}.png" for i in range(2)]
    for i, p in enumerate(images):
        random_image(10 + i).save(p)
    # 0-shot scores: language only, unclamped; ALFA at its own 240 px (the FAST scales are too small for r=3)
    args = ["detect", *map(str, images), *(FAST if method == "fade" else ALFA)]
    cache = tmp_path / "cache"
    rows = {}
    for precision in ("fp32", "bf16", "bf16"):
        code, stdout, stderr = run(capsys, monkeypatch, *args, "--precision", precision, cache=cache)
        assert code == 0, stderr
        rows.setdefault(precision, []).append([json.loads(line)["score"] for line in stdout.splitlines()])
        files = sorted((cache / "text").glob("*.npy"))
        if precision == "fp32":
            fp32_files = files
    bf16_first, bf16_second = rows["bf16"]
    assert bf16_first == bf16_second  # the second bf16 run reads its own cache
    assert len(files) == 2 * len(fp32_files)  # bf16 text embeddings were stored beside the fp32 ones
    tol = ALFA_BF16_TOL if method == "alfa" else TOL
    assert max(abs(a - b) for a, b in zip(rows["fp32"][0], bf16_first)) <= tol
