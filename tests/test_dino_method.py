"""`--method dino`: fusion with FADE's language part, banks (round trip, refusal), CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch

from fade_cli.data.demo_data import make_demo_dataset
from fade_cli.errors import MemoryBankError, UsageError
from fade_cli.methods import anomalydino as ad
from fade_cli.methods import get_method
from fade_cli.methods.base import build_reference_bank
from fade_cli.methods.memory import MemoryBank

from conftest import TINY_DINO, random_image
from helpers import FAST, rows, run

LANG = {"scales": "32,64", "cls_scale": 32, "seg_prompts": ["winclip"]}
VISION = {"vision_backbone": TINY_DINO, "vision_pretrained": "none", "vision_size": 56}
DINO_FLAGS = ["--method", "dino", "--vision-backbone", TINY_DINO, "--vision-pretrained", "none", "--vision-size", "56"]


def dino_pipeline(backbone, class_name="bottle", refs=None, **values):
    method = get_method("dino")
    pipe = method.pipeline(backbone, method.options({**LANG, **VISION, **values}), class_name)
    if refs is not None:
        pipe.use_reference_bank(pipe.embed_references(refs))
    return pipe


def fade_language(backbone, images, **values):
    """FADE's zero-shot outcome with language-only segmentation: map = language map, score = CLS score."""
    fade = get_method("fade")
    pipe = fade.pipeline(backbone, fade.options({**LANG, "segmentation_mode": "language", **values}), "bottle")
    return pipe(images)


@pytest.fixture(scope="module")
def refs():
    return [random_image(i, (72, 56)) for i in range(2)]


@pytest.fixture(scope="module")
def queries():
    return [random_image(20, (64, 64)), random_image(21, (80, 56))]


def test_language_part_is_fades(tiny_backbone, refs, queries):
    pipe = dino_pipeline(tiny_backbone, refs=refs, vision_weight=0.0, classification_mode="language")
    got = pipe(queries)
    expected = fade_language(tiny_backbone, queries)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.map, e.map)
        assert g.score == pytest.approx(e.score, abs=1e-7) and g.language_score == pytest.approx(e.score, abs=1e-7)


def test_fusion_as_fade_fuses(tiny_backbone, refs, queries):
    w, m = 0.3, 2.0
    pipe = dino_pipeline(tiny_backbone, refs=refs, vision_weight=w, vision_multiplier=m)
    got = pipe(queries)
    language = fade_language(tiny_backbone, queries)
    vision, q = ad.score_images(pipe.dino, pipe.reference_bank, queries, None, out_grid=64 // 16)
    for i, g in enumerate(got):
        torch.testing.assert_close(g.map, ((1 - w) * language[i].map + w * m * vision[i]).clamp(0, 1))
        assert g.score == pytest.approx(min(1.0, 0.5 * (language[i].score + m * float(q[i]))), abs=1e-6)
        assert g.vision_score == pytest.approx(m * float(q[i]), abs=1e-6)


def test_vision_only_is_anomalydino(tiny_backbone, refs, queries):
    pipe = dino_pipeline(tiny_backbone, refs=refs, segmentation_mode="vision", classification_mode="vision")
    emb = pipe.embed(queries)
    assert emb.clip == {}  # no CLIP forward when no language part is used
    got = pipe.score(emb)
    vision, q = ad.score_images(pipe.dino, pipe.reference_bank, queries, None, out_grid=4)
    for i, g in enumerate(got):
        torch.testing.assert_close(g.map, vision[i].clamp(0, 1))
        assert g.score == pytest.approx(float(q[i]), abs=1e-6) and g.language_score is None


def test_mask_auto_follows_the_class(tiny_backbone, refs, queries):
    screw = dino_pipeline(tiny_backbone, "screw", refs=refs, segmentation_mode="vision", classification_mode="vision")
    bottle = dino_pipeline(tiny_backbone, "bottle", refs=refs, segmentation_mode="vision", classification_mode="vision")
    assert screw.masked and not bottle.masked
    pca = ad.foreground_pca(screw.reference_bank)
    _, q_masked = ad.score_images(screw.dino, screw.reference_bank, queries, pca, out_grid=4)
    assert [r.score for r in screw(queries)] == pytest.approx(q_masked.tolist(), abs=1e-6)
    on = dino_pipeline(tiny_backbone, "bottle", refs=refs, mask="on", segmentation_mode="vision", classification_mode="vision")
    assert [r.score for r in on(queries)] == pytest.approx(q_masked.tolist(), abs=1e-6)


def test_eval_path_scores_like_a_pipeline_with_its_bank(tiny_backbone, refs, queries):
    with_bank = dino_pipeline(tiny_backbone, refs=refs)
    zero = dino_pipeline(tiny_backbone)
    few = zero.few_shot_variant()
    bank = MemoryBank.concat([few.embed_references([r]) for r in refs])  # as evaluation builds it
    got = few.score(zero.embed(queries, extra_features=(few.bank_layout.feature,)), bank)
    for g, e in zip(got, with_bank(queries)):
        torch.testing.assert_close(g.map, e.map)
        assert g.score == pytest.approx(e.score, abs=1e-6)
    with pytest.raises(UsageError, match="few-shot only"):
        zero(queries)


def test_config_records_the_dino_weights(tiny_backbone):
    pipe = dino_pipeline(tiny_backbone)
    cfg = pipe.config.as_dict()
    assert cfg["vision_weights_id"] == pipe.dino.weights_id and cfg["vision_backbone"] == TINY_DINO


def test_other_banks_are_refused(tiny_backbone, refs, tmp_path):
    from safetensors.torch import save_file

    from fade_cli.model.dino import load_dino_backbone

    pipe = dino_pipeline(tiny_backbone)
    other = load_dino_backbone(TINY_DINO, "none", seed=1, size=56)
    file = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.model.state_dict().items()}, str(file))
    foreign = dino_pipeline(tiny_backbone, vision_pretrained=str(file)).embed_references(refs)
    with pytest.raises(MemoryBankError, match="built with fade_tiny_patch14_dinov2 .weights"):
        pipe.use_reference_bank(foreign)
    with pytest.raises(MemoryBankError, match="built with fade-tiny"):
        pipe.use_reference_bank(build_reference_bank(tiny_backbone, refs, (32, 64), "clip"))
    with pytest.raises(MemoryBankError, match="augment-refs none"):
        pipe.use_reference_bank(dino_pipeline(tiny_backbone, augment_refs="none").embed_references(refs))
    with pytest.raises(MemoryBankError, match="no patches at scale"):
        pipe.use_reference_bank(dino_pipeline(tiny_backbone, vision_size=70).embed_references(refs))


def test_bad_options_are_one_line_usage_errors():
    method = get_method("dino")
    for values, match in (({"mask": "maybe"}, "--mask maybe"), ({"augment_refs": "flip"}, "--augment-refs flip"),
                          ({"vision_weight": 2.0}, "--vision-weight")):
        with pytest.raises(UsageError, match=match):
            method.options({**LANG, **VISION, **values})


@pytest.mark.parametrize("class_name", ["bottle", "screw"])
def test_image_path_stays_on_the_model_device(tiny_backbone, tmp_path, monkeypatch, refs, queries, class_name):
    """As tests/test_device_placement.py does for FADE: both models on a fake CUDA device
    (FakeTensorMode raises on mixed devices), bank built there, everything reaching to_results
    on CUDA. Values cannot be read there, so the foreground PCA (screw: mask on) is fitted from
    the CPU run's bank, and the scipy smoothing is replaced by a device check."""
    import copy
    import dataclasses

    from torch._subclasses.fake_tensor import FakeTensorMode

    from fade_cli.methods import dino as dino_module
    from fade_cli.methods import filo as filo_module
    from fade_cli.methods.dino import DinoPipeline, _language_only
    from fade_cli.methods.fade import FadePipeline
    from fade_cli.prompts.text import TextEncoderCache

    cpu = dino_pipeline(tiny_backbone, class_name)
    options = cpu.options
    # the CPU run fills the text cache the fake-CUDA run reads
    FadePipeline.from_config(tiny_backbone, _language_only(options.language), class_name,
                             text_cache=TextEncoderCache(tiny_backbone, tmp_path))
    cpu_bank = cpu.embed_references(refs)
    pca = ad.foreground_pca(cpu_bank)
    reached, smoothed = [], []

    def check_on_device(score, maps, language=None, vision=None, per_image=None):
        reached.append({k: t.device.type for k, t in dict(score=score, maps=maps, language=language, vision=vision).items()})
        return []

    def smooth_on_device(maps, sigma):
        smoothed.append(maps.device.type)
        return maps

    monkeypatch.setattr(dino_module, "to_results", check_on_device)
    monkeypatch.setattr(filo_module, "gaussian_smooth", smooth_on_device)
    monkeypatch.setattr(ad, "foreground_pca", lambda bank, threshold=ad.MASK_THRESHOLD: pca)
    clip_model, dino_model = copy.deepcopy(tiny_backbone.model), copy.deepcopy(cpu.dino.model)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake_clip = dataclasses.replace(tiny_backbone, model=clip_model.to("cuda"), device=torch.device("cuda"))
        fake_clip._fingerprint = tiny_backbone.weights_id
        fake_dino = dataclasses.replace(cpu.dino, model=dino_model.to("cuda"), device=torch.device("cuda"))
        fake_dino._fingerprint = cpu.dino.weights_id  # the fingerprint reads weight values
        cache = TextEncoderCache(fake_clip, tmp_path)
        language = FadePipeline.from_config(fake_clip, _language_only(options.language), class_name, text_cache=cache)
        assert cache.hits and not cache.misses
        pipe = DinoPipeline(fake_clip, options, class_name, language, dino=fake_dino)
        bank = pipe.embed_references(refs)  # rotations and forwards on the device
        pipe.use_reference_bank(bank)
        assert pipe(queries) == []
    (seen,) = reached
    assert set(seen.values()) == {"cuda"}, seen
    assert set(smoothed) == {"cuda"} and len(smoothed) == len(queries)


# ---- CLI -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("text-cache")  # one text cache: the prompts are encoded once


@pytest.fixture()
def folders(tmp_path):
    good, test = tmp_path / "good", tmp_path / "test"
    good.mkdir()
    test.mkdir()
    for i in range(2):
        random_image(i, (72, 56)).save(good / f"g{i}.png")
        random_image(10 + i, (64, 64)).save(test / f"t{i}.png")
    return good, test


def test_cli_detect_segment_and_saved_bank(capsys, monkeypatch, tmp_path, folders, cache):
    good, test = folders
    code, out, err = run(capsys, monkeypatch, "detect", str(test), "--refs", str(good), "--class", "screw", *FAST, *DINO_FLAGS,
                         cache=cache)
    assert code == 0, err
    direct = rows(out)
    assert [r["method"] for r in direct] == ["dino", "dino"] and all(0 <= r["score"] <= 1 for r in direct)
    bank = tmp_path / "screw.fadebank"
    code, _, err = run(capsys, monkeypatch, "bank", "build", str(good), "-o", str(bank), "--class", "screw", "--device", "cpu",
                       *FAST, *DINO_FLAGS)  # with the CLIP model: the bank is calibrated (leave-one-out)
    assert code == 0, err
    code, out, _ = run(capsys, monkeypatch, "bank", "info", str(bank))
    info = json.loads(out)
    assert info["model"] == TINY_DINO and info["feature"] == "dinov2" and len(info["weights_id"]) == 64
    assert info["arrays"]["grids"] == [2, 2] and info["n_images"] == 2
    assert info["calibration"]["image_scores"] == 2 and info["calibration"]["method"] == "dino"
    code, out, err = run(capsys, monkeypatch, "segment", str(test), "--bank", str(bank), "--out", str(tmp_path / "maps"),
                         "--class", "screw", *FAST, *DINO_FLAGS, cache=cache)
    assert code == 0, err
    assert [r["score"] for r in rows(out)] == [r["score"] for r in direct]  # the saved bank round-trips
    assert len(list((tmp_path / "maps").rglob("*.map.npy"))) == 2


def test_cli_refusals_are_one_line_exit_2(capsys, monkeypatch, tmp_path, folders, cache):
    from safetensors.torch import save_file

    from fade_cli.model.dino import load_dino_backbone

    good, test = folders
    bank = tmp_path / "b.fadebank"
    # --no-calibrate: nothing is scored, so no CLIP weights are loaded (the default ones are unreachable here)
    assert run(capsys, monkeypatch, "bank", "build", str(good), "-o", str(bank), "--device", "cpu", "--no-calibrate",
               *DINO_FLAGS)[0] == 0
    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in load_dino_backbone(TINY_DINO, "none", seed=3).model.state_dict().items()},
              str(other))
    cases = [
        (["detect", str(test), "--bank", str(bank), *FAST, *DINO_FLAGS[:-4], "--vision-pretrained", str(other),
          "--vision-size", "56"], "reference bank was built with fade_tiny_patch14_dinov2 (weights"),
        (["detect", str(test), "--bank", str(bank), *FAST, *DINO_FLAGS[:2], "--vision-backbone", "vit_small_patch14_dinov2",
          "--vision-pretrained", "none", "--vision-size", "56"], "reference bank was built with fade_tiny_patch14_dinov2"),
        (["detect", str(test), "--bank", str(bank), *FAST], "reference bank was built with fade_tiny_patch14_dinov2"),
        (["detect", str(test), *FAST, *DINO_FLAGS], "few-shot only"),
        (["detect", str(test), "--refs", str(good), *FAST, "--mask", "on"], "--mask does not apply to --method fade"),
        (["detect", str(test), "--refs", str(good), *FAST, *DINO_FLAGS, "--vision-feature", "gem"],
         "--vision-feature does not apply to --method dino"),
        (["bank", "build", str(good), "-o", str(tmp_path / "x"), "--feature", "gem", *DINO_FLAGS], "--feature does not apply"),
        (["bank", "build", str(good), "-o", str(tmp_path / "x"), "--augment-refs", "none"],
         "--augment-refs does not apply to --method fade"),
        (["detect", str(test), "--refs", str(good), *FAST, *DINO_FLAGS[:-2], "--vision-size", "50"], "multiple of the patch size"),
    ]
    for args, message in cases:
        code, out, err = run(capsys, monkeypatch, *args, cache=cache)
        lines = [line for line in err.splitlines() if line.startswith("fade: error")]
        assert code == 2 and len(lines) == 1 and message in lines[0], (args, err)
        assert "Traceback" not in err and out == ""
    assert not (tmp_path / "x").exists()


def test_cli_eval_few_shot(capsys, monkeypatch, tmp_path, cache):
    demo = make_demo_dataset(tmp_path / "demo", classes=("tiles",), n_train=3, n_good=2, n_bad=1, size=64)
    out = tmp_path / "eval"
    code, stdout, err = run(capsys, monkeypatch, "eval", str(demo), "--dataset", "mvtec", "--shots", "1", "--seeds", "1",
                            "--out", str(out), "--eval-size", "64", "-q", *FAST, *DINO_FLAGS, cache=cache)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["method"] == "dino"
    assert results["settings"]["config"]["vision_weights_id"] and results["settings"]["shots"] == [1]
    code, _, err = run(capsys, monkeypatch, "eval", str(demo), "--dataset", "mvtec", "--shots", "0,1", "--seeds", "1",
                       "--out", str(tmp_path / "e0"), "--eval-size", "64", "-q", *FAST, *DINO_FLAGS, cache=cache)
    assert code == 2 and "few-shot only" in err
