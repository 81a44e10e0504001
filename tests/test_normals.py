"""Normal scores for calibration: leave-one-out equals scoring each reference directly against a
bank built from the others; zero-shot normal scores equal the pipeline's own scores."""

from __future__ import annotations

import numpy as np
import pytest

from fade_cli.methods.fade import FadeConfig, FadePipeline
from fade_cli.decisions.calibration import CalibrationError, NormalScores
from fade_cli.decisions.normals import check_settings, full_size_map, leave_one_out, score_normals
from fade_cli.methods.base import build_reference_bank

from conftest import random_image

CONFIG = FadeConfig(cls_scale=32, seg_scales=(32, 64), seg_prompts=("winclip",))


@pytest.fixture(scope="module")
def refs():
    return [random_image(40 + i, (64 + 8 * i, 56)) for i in range(4)]


@pytest.fixture(scope="module")
def zero(tiny_backbone):
    return FadePipeline.from_config(tiny_backbone, CONFIG, "object")


def test_leave_one_out_equals_a_bank_of_the_others(tiny_backbone, zero, refs):
    layout = ((32, 64), "clip")  # FADE few-shot: CLIP patches
    few = FadePipeline.from_config(tiny_backbone, CONFIG, "object", build_reference_bank(tiny_backbone, refs, *layout))
    scores = leave_one_out(few, refs, [f"r{i}.png" for i in range(4)], "object", pixels_per_image=64)
    assert scores.meta["how"] == "leave-one-out" and scores.pixels.shape == (4, 64)
    for i, img in enumerate(refs):
        others = build_reference_bank(tiny_backbone, refs[:i] + refs[i + 1:], *layout)
        direct = FadePipeline.from_config(tiny_backbone, CONFIG, "object", others)([img])[0]
        assert scores.image[i] == pytest.approx(direct.score, abs=1e-6)
        full = full_size_map(direct.map, img.size)
        assert np.isin(scores.pixels[i], full).all()  # samples of this image's own map
    assert scores.meta["settings"]["config"]["vision_multiplier"] == 3.5  # the few-shot preset
    with pytest.raises(CalibrationError, match="few-shot pipeline"):
        leave_one_out(zero, refs, ["r.png"] * 4, "object")
    with pytest.raises(CalibrationError, match="hold 3 images"):
        leave_one_out(few, refs[:3], ["r.png"] * 3, "object")


def test_zero_shot_normal_scores_are_the_pipeline_scores(zero, refs):
    scores = score_normals(zero, refs, [f"r{i}.png" for i in range(4)], "object", batch_size=3, pixels_per_image=32)
    direct = zero(refs)
    assert np.allclose(scores.image, [r.score for r in direct], atol=1e-6)
    assert scores.meta["how"] == "zero-shot" and scores.meta["settings"]["method"] == "fade"
    check_settings(scores, zero, "c.json")  # same settings: accepted
    other = FadePipeline.from_config(zero.backbone, FadeConfig(cls_scale=32, seg_scales=(32,), seg_prompts=("winclip",)), "object")
    with pytest.raises(CalibrationError, match="seg_scales"):
        check_settings(scores, other, "c.json")
    with pytest.raises(CalibrationError, match="another class, 'object' .this run: 'bottle'"):
        check_settings(scores, FadePipeline.from_config(zero.backbone, CONFIG, "bottle"), "c.json")
    json_back = NormalScores.from_json(scores.to_json())
    check_settings(json_back, zero, "c.json")  # survives the file round trip
