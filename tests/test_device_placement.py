"""Every tensor of the image path lands on the model's device: checked on a fake CUDA device.

No GPU is available where fade is built and tested, but a tensor left on the CPU while the
model is on CUDA would only fail on a GPU. torch's FakeTensorMode runs the computation on
shape-and-device-only tensors and raises on mixed devices exactly as CUDA would, so the tiny
model is moved to a fake `cuda` and FADE, ALFA and FiLo (every switch on), 0- and few-shot,
run their preprocessing, forward passes, reference banks, kNN, guidance, prompt adaptation,
aligner, FiLo refinements and fusion there. Fake tensors hold no values, so the run stops
where values are read: text embeddings come from a cache filled on the CPU first; FiLo's
Gaussian smoothing (scipy, a host round trip by design) is replaced by a device check; and
`to_results`, the one place a batch's outcome is copied to the host, is replaced by a check
that everything reaching it is on CUDA.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from conftest import random_image
from fade_cli.methods import alfa as alfa_module
from fade_cli.methods import filo as filo_module
from fade_cli.methods import fade as pipeline_module
from fade_cli.methods.alfa import AlfaConfig, AlfaPipeline
from fade_cli.methods.fade import FadeConfig
from fade_cli.methods.filo import resolve_switches
from fade_cli.methods.memory import MemoryBank
from fade_cli.methods.fade import FadePipeline
from fade_cli.methods.base import build_reference_bank
from fade_cli.prompts.text import TextEncoderCache

FADE = FadeConfig(cls_scale=32, seg_scales=(32, 64), seg_prompts=("winclip",))
ALFA = AlfaConfig(image_size=64, windows=(2, 3))
FILO = dataclasses.replace(FADE, **resolve_switches(True, positions=True))  # every FiLo part on


def make(method: str, backbone, cache: TextEncoderCache, bank: str, refs: list, saved: Path):
    """The method's pipeline. bank: "none" (0-shot), "built" (a reference bank built on
    `backbone`), or "loaded" (a bank file made earlier on the CPU, as --bank gives)."""
    few = FADE.resolved(True)
    scales, feature = ((ALFA.image_size,), "clip") if method == "alfa" else (few.seg_scales, few.vision_feature)
    if bank == "loaded":
        if not saved.exists():
            build_reference_bank(backbone, refs, scales, feature).save(saved)
        reference_bank = MemoryBank.load(saved)
    else:
        reference_bank = build_reference_bank(backbone, refs, scales, feature) if bank == "built" else None
    if method == "alfa":
        return AlfaPipeline.from_config(backbone, ALFA, "bottle", reference_bank, cache)
    return FadePipeline.from_config(backbone, FILO if method == "filo" else FADE, "bottle", reference_bank, cache)


@pytest.mark.parametrize("bank", ["none", "built", "loaded"])
@pytest.mark.parametrize("method", ["fade", "alfa", "filo"])
def test_image_path_stays_on_the_model_device(tiny_backbone, tmp_path, monkeypatch, method, bank):
    images = [random_image(0), random_image(1, (90, 60))]
    refs = [random_image(5)]
    saved = tmp_path / "refs.fadebank"
    # the real run on the CPU: fills the text cache (and writes the bank file), gives the shapes
    expected = make(method, tiny_backbone, TextEncoderCache(tiny_backbone, tmp_path), bank, refs, saved)(images)

    reached = []

    def check_on_device(score, maps, language=None, vision=None):
        tensors = {"score": score, "maps": maps, "language": language, "vision": vision}
        reached.append({k: (t.device.type, tuple(t.shape)) for k, t in tensors.items() if t is not None})
        return []

    smoothed = []

    def smooth_on_device(maps, sigma):
        smoothed.append(maps.device.type)
        return maps

    monkeypatch.setattr(pipeline_module, "to_results", check_on_device)
    monkeypatch.setattr(alfa_module, "to_results", check_on_device)
    model = copy.deepcopy(tiny_backbone.model)  # Module.to moves in place
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake_cuda = dataclasses.replace(tiny_backbone, model=model.to("cuda"), device=torch.device("cuda"))
        fake_cuda._fingerprint = tiny_backbone.weights_id  # the fingerprint reads weight values
        fake_cuda._full_fingerprint = tiny_backbone.weights_fingerprint
        cache = TextEncoderCache(fake_cuda, tmp_path)
        pipeline = make(method, fake_cuda, cache, bank, refs, saved)
        assert cache.hits and not cache.misses  # text embeddings from the CPU run's cache
        monkeypatch.setattr(filo_module, "gaussian_smooth", smooth_on_device)  # after the CPU run
        assert pipeline(images) == []
    (seen,) = reached
    assert {device for device, _ in seen.values()} == {"cuda"}, seen
    assert seen["maps"][1] == (len(images), *expected[0].map.shape)
    assert seen["score"][1] == (len(images),)
    assert ("vision" in seen) == (bank != "none" or method != "alfa")
    if method == "filo":
        assert set(smoothed) == {"cuda"} and len(smoothed) == 2
    assert next(tiny_backbone.model.parameters()).device.type == "cpu"  # the shared model stayed
