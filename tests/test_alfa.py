"""ALFA: run-time prompt adaptation, the fine-grained aligner and the pipeline, against slow
direct implementations (tests/reference.py) on small random tensors and the tiny model."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

import reference as ref
from conftest import random_image
from fade_cli.methods import aligner, rtp
from fade_cli.methods import alfa as alfa_method
from fade_cli.methods.alfa import AlfaConfig, AlfaPipeline, alfa_config_from_options
from fade_cli.model.backbone import preprocess_batch
from fade_cli.errors import UsageError
from fade_cli.prompts.text import TextEncoderCache


def _sims(seed, b=3, tn=7, ta=5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, tn, generator=g, dtype=torch.float64), torch.rand(b, ta, generator=g, dtype=torch.float64) * 0.8 + 0.15


@pytest.mark.parametrize("seed", range(5))
def test_contextual_scores_match_the_paper(seed):
    sn, sa = _sims(seed)
    got = rtp.contextual_scores(sn, sa)
    for b in range(sn.shape[0]):
        n, a = sn[b].tolist(), sa[b].tolist()
        want = [ref.contextual_score(d, n, a) for d in n + a]
        assert torch.allclose(got[b], torch.tensor(want, dtype=torch.float64), atol=1e-12)
    assert (got >= 0).all() and (got < 1).all()


@pytest.mark.parametrize("seed", range(5))
def test_alfa_and_filo_filters_keep_the_same_prompts(seed):
    sn, sa = _sims(seed)
    alfa = rtp.keep_mask(sn, sa, "alfa")
    filo = rtp.keep_mask(sn, sa, "filo")
    for b in range(sn.shape[0]):
        n, a = sn[b].tolist(), sa[b].tolist()
        want = [ref.overlap_keep(d, n, a) for d in n + a]
        assert filo[b].tolist() == want
    assert torch.equal(alfa, filo)
    assert rtp.keep_mask(sn, sa, "none").all()
    with pytest.raises(ValueError):
        rtp.keep_mask(sn, sa, "bogus")


def test_disjoint_intervals_keep_everything_and_nested_intervals_drop_the_inner_state():
    sn = torch.tensor([[0.10, 0.20, 0.30]])
    sa = torch.tensor([[0.50, 0.60]])
    assert rtp.keep_mask(sn, sa, "alfa").all()
    # anomalous interval inside the normal one: every anomalous prompt is in the overlap
    sa_inner = torch.tensor([[0.15, 0.25]])
    keep = rtp.keep_mask(sn, sa_inner, "alfa")
    assert keep[0].tolist() == [True, False, True, False, False]


def test_adapted_text_falls_back_to_all_prompts_of_an_emptied_state():
    g = torch.Generator().manual_seed(0)
    normal = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    anomalous = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    image = F.normalize(torch.randn(2, 8, generator=g), dim=-1)
    # make the anomalous similarities sit strictly inside the normal interval for image 0
    sim_n = image @ normal.T
    h_n, h_a, used = rtp.adapted_text(image, normal, anomalous, "alfa")
    keep = rtp.keep_mask(sim_n, image @ anomalous.T, "alfa")
    for b in range(2):
        for h, prompts, mask in ((h_n, normal, keep[b, :4]), (h_a, anomalous, keep[b, 4:])):
            m = mask if mask.any() else torch.ones_like(mask)
            assert torch.allclose(h[b], ref.l2n(prompts[m].mean(0)), atol=1e-6)
    # a fully emptied state: anomalous prompts identical to each other and inside the normal range
    inner = F.normalize(normal[:2].mean(0, keepdim=True), dim=-1).repeat(3, 1)
    h_n, h_a, used = rtp.adapted_text(image, normal, inner, "alfa")
    sims = image @ inner.T
    inside = (sims[:, 0] >= (image @ normal.T).amin(-1)) & (sims[:, 0] <= (image @ normal.T).amax(-1))
    for b in range(2):
        if inside[b]:
            assert used[b, 4:].all()  # fallback: all anomalous prompts used
            assert torch.allclose(h_a[b], ref.l2n(inner.mean(0)), atol=1e-6)


def test_window_indices_cover_the_grid():
    idx = aligner.window_indices(5, 2)
    assert idx.shape == (16, 4)
    assert idx[0].tolist() == [0, 1, 5, 6] and idx[-1].tolist() == [18, 19, 23, 24]
    with pytest.raises(ValueError):
        aligner.window_indices(3, 4)


def test_local_embeddings_equal_open_clip_on_the_window_tokens(tiny_backbone):
    img = random_image(3, (80, 64))
    pixels = preprocess_batch([img, random_image(4)], 240)
    feats = aligner.encode_with_windows(tiny_backbone, pixels, (2, 3))
    model = tiny_backbone.model
    g = feats.grid
    with torch.no_grad():
        for r in (2, 3):
            n_side = g - r + 1
            for w in (0, 7, n_side * n_side - 1):
                a, b = divmod(w, n_side)
                want = ref.local_window_embedding(model, pixels[1:2], range(a, a + r), range(b, b + r))
                assert torch.allclose(feats.local[r][1, w], want, atol=1e-5)
        # the global pass: CLS equals open_clip's image embedding
        want_cls = ref.l2n(model.encode_image(pixels))
        assert torch.allclose(feats.cls, want_cls, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_projected_text_is_the_ridge_solution(seed):
    g = torch.Generator().manual_seed(seed)
    b, w, n, d = 2, 3, 5, 12
    u = F.normalize(torch.randn(b, w, n, d, generator=g, dtype=torch.float64), dim=-1)
    t = F.normalize(u + 0.3 * torch.randn(b, w, n, d, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(b, 2, d, generator=g, dtype=torch.float64), dim=-1)
    got = aligner.project_text(text, u, t, ridge=0.1)
    for i in range(b):
        for j in range(w):
            W = ref.ridge_projection(u[i, j], t[i, j], 0.1)
            assert torch.allclose(got[i, j], ref.l2n(text[i] @ W), atol=1e-9)
    # a huge ridge keeps the identity: prompts unchanged
    assert torch.allclose(aligner.project_text(text, u, t, ridge=1e12), text[:, None].expand_as(got), atol=1e-9)


def test_local_scores_are_the_eq11_softmax():
    g = torch.Generator().manual_seed(0)
    local = F.normalize(torch.randn(2, 4, 6, generator=g), dim=-1)
    text = F.normalize(torch.randn(2, 4, 2, 6, generator=g), dim=-1)
    got = aligner.local_scores(local, text, 0.01)
    for b in range(2):
        for w in range(4):
            logits = torch.stack([local[b, w] @ text[b, w, 0], local[b, w] @ text[b, w, 1]]) / 0.01
            assert torch.isclose(got[b, w], ref.softmax(logits)[1], atol=1e-6)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_windows_to_patches_is_the_harmonic_mean_of_covering_windows(r):
    grid = 5
    g = torch.Generator().manual_seed(r)
    n_side = grid - r + 1
    scores = torch.rand(1, n_side * n_side, generator=g, dtype=torch.float64) * 0.9 + 0.05
    by_corner = {divmod(w, n_side): float(scores[0, w]) for w in range(n_side * n_side)}
    want = ref.harmonic_window_map(by_corner, grid, r)
    assert np.allclose(aligner.windows_to_patches(scores, grid, r)[0].numpy(), want, atol=1e-12)


def test_harmonic_mean_across_window_sizes():
    a, b = torch.full((1, 2, 2), 0.2), torch.full((1, 2, 2), 0.6)
    assert torch.allclose(aligner.harmonic_mean([a, b]), torch.full((1, 2, 2), 2 / (1 / 0.2 + 1 / 0.6)))


@pytest.fixture(scope="module")
def alfa_images():
    return [random_image(10 + i, (96, 80)) for i in range(2)]


def _pipeline(backbone, tmp_path, **changes):
    cfg = AlfaConfig(**changes)
    return AlfaPipeline.from_config(backbone, cfg, "bottle", None, TextEncoderCache(backbone, tmp_path))


def test_pipeline_score_is_half_global_plus_max_map(tiny_backbone, alfa_images, tmp_path):
    pipe = _pipeline(tiny_backbone, tmp_path)
    emb = pipe.embed(alfa_images)
    results = pipe.score(emb)
    feats = emb.features
    for i, res in enumerate(results):
        assert res.map.shape == (15, 15) and 0 <= float(res.map.min()) and float(res.map.max()) <= 1
        # S_G recomputed directly from the kept prompts
        sim_n = feats.cls[i] @ pipe.normal.T
        sim_a = feats.cls[i] @ pipe.anomalous.T
        n, a = sim_n.tolist(), sim_a.tolist()
        keep_n = [ref.contextual_score(d, n, a) > 0 for d in n] or None
        keep_a = [ref.contextual_score(d, n, a) > 0 for d in a]
        keep_n = torch.tensor(keep_n) if any(keep_n) else torch.ones(len(n), dtype=torch.bool)
        keep_a = torch.tensor(keep_a) if any(keep_a) else torch.ones(len(a), dtype=torch.bool)
        h_n, h_a = ref.l2n(pipe.normal[keep_n].mean(0)), ref.l2n(pipe.anomalous[keep_a].mean(0))
        s_g = ref.softmax(torch.stack([feats.cls[i] @ h_n, feats.cls[i] @ h_a]) / 0.01)[1]
        assert res.language_score == pytest.approx(float(s_g), abs=1e-5)
        assert res.score == pytest.approx(0.5 * (float(s_g) + float(res.map.max())), abs=1e-5)


def test_each_ablation_switch_changes_the_output(tiny_backbone, alfa_images, tmp_path):
    base = _pipeline(tiny_backbone, tmp_path)(alfa_images)
    variants = {
        "no aligner": _pipeline(tiny_backbone, tmp_path, aligner=False),
        "no rtp": _pipeline(tiny_backbone, tmp_path, prompt_filter="none"),
        "windows 2": _pipeline(tiny_backbone, tmp_path, windows=(2,)),
        "windows 2,3,4": _pipeline(tiny_backbone, tmp_path, windows=(2, 3, 4)),
    }
    for name, pipe in variants.items():
        out = pipe(alfa_images)
        assert any(not torch.allclose(a.map, b.map, atol=1e-7) for a, b in zip(base, out)), name
    same = _pipeline(tiny_backbone, tmp_path, prompt_filter="filo")(alfa_images)  # same rule, other formula
    assert all(torch.allclose(a.map, b.map) and a.score == b.score for a, b in zip(base, same))


def test_alfa_options_are_validated():
    assert alfa_config_from_options(windows="3,2").windows == (2, 3)
    assert alfa_config_from_options(no_rtp=True).prompt_filter == "none"
    assert not alfa_config_from_options(no_aligner=True).aligner
    for bad in ({"windows": "a"}, {"windows": "0"}, {"prompt_filter": "x"}):
        with pytest.raises(UsageError):
            alfa_config_from_options(**bad)


# ---- few-shot (sec. 4.3): the memory-bank term on S_L's scale, inside eq. 12's max -----------
def _direct_few_shot_map(language, distance, m):
    """S̃_L element by element: ½(S_L + m·M), clipped to [0, 1]."""
    out = torch.empty_like(language)
    for idx in np.ndindex(*language.shape):
        out[idx] = min(1.0, max(0.0, 0.5 * (float(language[idx]) + m * float(distance[idx]))))
    return out


@pytest.mark.parametrize("m", [1.0, 3.5, 80.0])
def test_few_shot_map_is_the_half_sum_on_s_l_scale(m):
    g = torch.Generator().manual_seed(int(m))
    language = torch.rand(2, 5, 5, generator=g, dtype=torch.float64)
    distance = torch.rand(2, 5, 5, generator=g, dtype=torch.float64) * 0.3  # ½(1 − cos) of CLIP patches
    assert torch.allclose(alfa_method.few_shot_map(language, distance, m), _direct_few_shot_map(language, distance, m))
    # ranks pixels as the paper's plain sum S_L + m·M does (where nothing is clipped)
    if m == 1.0:
        flat = alfa_method.few_shot_map(language, distance, m).flatten()
        assert torch.equal(flat.argsort(), (language + m * distance).flatten().argsort())


def _direct_knn(query, bank):
    """½(1 − max cos) of each query row against the bank rows, by a Python loop."""
    return torch.tensor([0.5 * (1.0 - max(float(q @ r) for r in bank)) for q in query])


def test_few_shot_adds_the_memory_bank_term(tiny_backbone, alfa_images, tmp_path):
    from fade_cli.methods.base import build_reference_bank

    zero = _pipeline(tiny_backbone, tmp_path)
    refs = [random_image(30), random_image(31)]
    bank = build_reference_bank(tiny_backbone, refs, (240,), "clip")
    few = zero.few_shot_variant()
    emb = zero.embed(alfa_images)
    z, f = zero.score(emb), few.score(emb, bank)
    for i, (a, b) in enumerate(zip(z, f)):
        distance = _direct_knn(emb.features.patches[i], bank.patches[240]).view(15, 15)
        expected = _direct_few_shot_map(a.map.double(), distance.double(), 3.5)
        assert torch.allclose(b.map.double(), expected, atol=1e-5)
        assert b.score == pytest.approx(0.5 * (a.language_score + float(expected.max())), abs=1e-5)  # eq. 12
        assert b.vision_score == pytest.approx(3.5 * float(distance.max()), abs=1e-5)
    # the reference image itself has (near) zero memory-bank distance everywhere
    same = few.score(zero.embed([random_image(30)]), bank)[0]
    assert same.vision_score == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(Exception, match=r"no patches at scale\(s\) \[240\]"):
        few.score(emb, build_reference_bank(tiny_backbone, [random_image(30)], (448,), "clip"))


def test_window_memory_bank(tiny_backbone, alfa_images, tmp_path):
    """vision_feature="window": the references' window embeddings per size r; a query window's
    distance to its nearest reference window, to patches and over sizes as S_L (WinCLIP+)."""
    from fade_cli.methods.base import build_reference_bank

    zero = _pipeline(tiny_backbone, tmp_path, vision_feature="window")
    layout = zero.bank_layout
    assert (layout.scales, layout.feature) == ((2, 3), "window@240")
    refs = [random_image(30), random_image(31)]
    bank = zero.embed_references(refs)
    assert sorted(bank.patches) == [2, 3] and bank.meta["feature"] == "window@240"
    ref_feats = aligner.encode_with_windows(tiny_backbone, preprocess_batch(refs, 240, "cpu"), (2, 3))
    for r, w in ((2, 14 * 14), (3, 13 * 13)):
        assert bank.patches[r].shape[0] == 2 * w
        assert torch.allclose(bank.patches[r], ref_feats.local[r].reshape(2 * w, -1), atol=1e-5)
    few = zero.few_shot_variant()
    emb = zero.embed(alfa_images)
    z, f = zero.score(emb), few.score(emb, bank)
    for i, (a, b) in enumerate(zip(z, f)):
        per_size = []
        for r in (2, 3):
            win = _direct_knn(emb.features.local[r][i], bank.patches[r])
            per_size.append(aligner.windows_to_patches(win[None].float(), 15, r)[0])
        distance = 2.0 / (1.0 / per_size[0].clamp_min(1e-6) + 1.0 / per_size[1].clamp_min(1e-6))
        assert torch.allclose(b.map.double(), _direct_few_shot_map(a.map.double(), distance.double(), 3.5), atol=1e-5)
    # a CLIP-patch bank is refused by the window run, naming both kinds
    with pytest.raises(Exception, match="holds clip patches; this run's vision feature is window@240"):
        few.score(emb, build_reference_bank(tiny_backbone, refs, (240,), "clip"))


def test_alfa_few_shot_settings_are_validated():
    assert not AlfaConfig(vision_feature="gem").check() == []
    assert not AlfaConfig(vision_multiplier=-1).check() == []
    assert not AlfaConfig(ridge=0).check() == []
    assert AlfaConfig(vision_feature="window", vision_multiplier=0.5, ridge=10).check() == []


def test_ridge_sweeps_from_the_aligner_to_no_aligner(tiny_backbone, alfa_images, tmp_path):
    """λ → ∞ keeps W = I: the pipeline equals --no-aligner; a small λ moves the map."""
    emb = _pipeline(tiny_backbone, tmp_path).embed(alfa_images)
    plain = _pipeline(tiny_backbone, tmp_path, aligner=False).score(emb)
    huge = _pipeline(tiny_backbone, tmp_path, ridge=1e12).score(emb)
    small = _pipeline(tiny_backbone, tmp_path, ridge=1e-3).score(emb)
    assert all(torch.allclose(a.map, b.map, atol=1e-6) and a.score == pytest.approx(b.score, abs=1e-6)
               for a, b in zip(plain, huge))
    assert any(not torch.allclose(a.map, b.map, atol=1e-4) for a, b in zip(plain, small))
