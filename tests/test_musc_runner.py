"""Scoring files with MuSc (fade_cli/engines/subsets.py): subsets, chunk sizes, bad files, resume, outputs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fade_cli.methods.musc_batch import MuscOptions, MuscPipeline
from fade_cli.engines.runner import OutputSpec, ScorerSpec
from fade_cli.engines.subsets import TOO_FEW, score_subsets, subset_plan

from musc_images import product_images


@pytest.fixture()
def product_dir(tmp_path: Path) -> list[Path]:
    d = tmp_path / "line"
    d.mkdir()
    paths = []
    for i, img in enumerate(product_images(6, defect=4)):
        paths.append(d / f"img{i}.png")
        img.save(paths[-1])
    return paths


SPEC = ScorerSpec(method="musc", class_name="object", options=MuscOptions(), model="fade-tiny", pretrained="none", device="cpu")


def _pipeline(backbone, **options) -> MuscPipeline:
    return MuscPipeline(backbone, MuscOptions(scale=64, **options), "object")


def _scores(outcomes) -> dict[str, float]:
    return {o.path.name: o.row["score"] for o in outcomes if o.row}


def test_subset_plan_cuts_all_inputs(product_dir):
    assert [len(s) for s in subset_plan(product_dir, 4)] == [3, 3]
    assert subset_plan(product_dir, 6) == [product_dir]


def test_same_scores_for_any_batch_size_and_equivalent_splits(tiny_backbone, product_dir):
    output = OutputSpec(threshold=0.5, base=product_dir[0].parent)
    ref = _scores(score_subsets(_pipeline(tiny_backbone, subset_size=3), product_dir, SPEC, output, batch_size=1))
    assert len(ref) == 6
    for subset_size, batch in ((3, 4), (4, 1), (4, 6), (5, 2)):  # 3, 4, 5: the same two subsets of three
        got = _scores(score_subsets(_pipeline(tiny_backbone, subset_size=subset_size), product_dir, SPEC, output, batch))
        assert got == pytest.approx(ref, abs=1e-6), (subset_size, batch)
    whole = _scores(score_subsets(_pipeline(tiny_backbone, subset_size=6), product_dir, SPEC, output, 2))
    assert whole != pytest.approx(ref, abs=1e-6)  # other subsets, other scores
    assert max(whole, key=whole.get) == "img4.png"


def test_a_corrupt_file_is_one_error_and_left_out(tiny_backbone, product_dir):
    bad = product_dir[0].parent / "img2.png"
    bad.write_bytes(b"not a png")
    output = OutputSpec(threshold=0.5, base=product_dir[0].parent)
    outcomes = list(score_subsets(_pipeline(tiny_backbone, subset_size=6), product_dir, SPEC, output, 2))
    assert [o.path for o in outcomes] == product_dir
    assert outcomes[2].row is None and outcomes[2].error and outcomes[2].error != TOO_FEW
    others = [p for p in product_dir if p != bad]
    alone = _scores(score_subsets(_pipeline(tiny_backbone, subset_size=6), others, SPEC, output, 2))
    assert _scores(outcomes) == pytest.approx(alone, abs=1e-6)  # as if the file were not there


def test_a_subset_with_one_readable_image_is_refused_per_image(tiny_backbone, product_dir):
    output = OutputSpec(threshold=0.5, base=product_dir[0].parent)
    for p in product_dir[1:3]:
        p.write_bytes(b"")
    outcomes = list(score_subsets(_pipeline(tiny_backbone, subset_size=3), product_dir, SPEC, output, 1))
    assert outcomes[0].error == TOO_FEW and outcomes[1].error and outcomes[1].error != TOO_FEW
    assert all(o.row for o in outcomes[3:])


def test_resume_skips_finished_subsets_and_keeps_the_others_identical(tiny_backbone, product_dir, monkeypatch):
    output = OutputSpec(threshold=0.5, base=product_dir[0].parent)
    pipeline = _pipeline(tiny_backbone, subset_size=3)
    full = _scores(score_subsets(pipeline, product_dir, SPEC, output, 2))
    embedded = []
    original = pipeline.embed
    monkeypatch.setattr(pipeline, "embed", lambda images: embedded.append(len(images)) or original(images))
    done = set(product_dir[:4])  # the first subset finished, the second half-way
    outcomes = list(score_subsets(pipeline, product_dir, SPEC, output, 3, done=done))
    assert [o.path for o in outcomes] == product_dir[4:]
    assert sum(embedded) == 3  # only the unfinished subset was embedded, all of it
    assert _scores(outcomes) == pytest.approx({k: full[k] for k in ("img4.png", "img5.png")}, abs=1e-6)


def test_segment_writes_every_output(tiny_backbone, product_dir, tmp_path):
    out = tmp_path / "out"
    output = OutputSpec(threshold=0.5, base=product_dir[0].parent, out=out)
    outcomes = list(score_subsets(_pipeline(tiny_backbone, subset_size=6), product_dir, SPEC, output, 4))
    for o in outcomes:
        assert o.row["method"] == "musc" and o.row["banks"] == []
        for f in o.row["outputs"].values():
            assert Path(f).is_file()
    assert not list(out.rglob("*.tmp*"))
