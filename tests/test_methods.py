"""The methods registry and protocol: lookup by name, per-method options from the flags, refused
inapplicable flags, one text cache for every method, `prompts embed` warming each method's keys,
and `explain` reporting the pipeline's own prompt decision."""

from __future__ import annotations

import json
import pickle

import pytest

from fade_cli.errors import UsageError
from fade_cli.methods import get_method, method_flags, method_names
from fade_cli.methods.alfa import ALFA_FRAME, AlfaConfig
from fade_cli.prompts.text import TextEncoderCache

from conftest import TINY_CONFIG
from helpers import FAST, run

TINY = ["--model", str(TINY_CONFIG), "--pretrained", "none", "--device", "cpu"]
# per method: the flags its own tests use (FADE / FiLo at small scales, ALFA at its default size)
OWN_FLAGS = {"fade": FAST[6:], "filo": FAST[6:], "alfa": []}


def test_registry_lists_and_finds_every_method():
    assert method_names()[:3] == ["fade", "alfa", "filo"]
    for name in method_names():
        method = get_method(name)
        assert method.name == name and method.flags <= method_flags()
        assert isinstance(method.scores_whole_batch, bool)
    with pytest.raises(UsageError, match="--method nope: expected one of fade, alfa, filo"):
        get_method("nope")


def test_options_come_from_the_declared_flags_only():
    fade, filo, alfa = get_method("fade"), get_method("filo"), get_method("alfa")
    assert fade.options({}).object_prior is None and filo.options({}).object_prior == 0.7
    assert filo.options({"object_prior": 1.0}).object_prior is None  # λ = 1 is off
    assert fade.options({"scales": "32,64", "cls_scale": 32}, map_size=64).seg_scales == (32, 64)
    assert fade.options({}, map_size=64).smooth_size == 64
    assert alfa.options({"windows": "3,2", "cls_scale": 64}) == AlfaConfig(image_size=64, windows=(2, 3))
    with pytest.raises(UsageError, match="--windows"):
        alfa.options({"windows": "x"})
    with pytest.raises(UsageError, match="--scales"):
        fade.options({"scales": "a,b"})


@pytest.mark.parametrize("method, flag, line", [
    ("fade", ["--windows", "2"], "--windows does not apply to --method fade"),
    ("fade", ["--prompt-filter", "none"], "--prompt-filter does not apply to --method fade"),
    ("filo", ["--no-aligner"], "--no-aligner does not apply to --method filo"),
    ("alfa", ["--scales", "240"], "--scales does not apply to --method alfa"),
    ("alfa", ["--vision-weight", "0.5"], "--vision-weight does not apply to --method alfa"),
    ("alfa", ["--no-positions"], "--no-positions does not apply to --method alfa"),
])
def test_a_flag_of_another_method_exits_2_naming_flag_and_method(capsys, monkeypatch, image_dir, tmp_path, method, flag, line):
    for command in ("detect", "segment"):
        extra = ["--out", str(tmp_path / "out")] if command == "segment" else []
        code, stdout, stderr = run(capsys, monkeypatch, command, str(image_dir), "--method", method, *flag, *extra, *TINY,
                                   cache=tmp_path)
        assert code == 2 and stdout == "" and stderr == f"fade: error: {line}\n"
    assert not (tmp_path / "out").exists()


def test_eval_refuses_a_flag_of_another_method(capsys, monkeypatch, tmp_path):
    code, _, stderr = run(capsys, monkeypatch, "eval", str(tmp_path), "--method", "alfa", "--smooth", "2", *TINY,
                          cache=tmp_path)
    assert code == 2 and stderr == "fade: error: --smooth does not apply to --method alfa\n"


def test_alfa_encodes_through_the_runs_cache(tiny_backbone, tmp_path, monkeypatch):
    alfa = get_method("alfa")
    options = alfa.options({"cls_scale": 64, "windows": "2"})
    cache = TextEncoderCache(tiny_backbone, tmp_path, enabled=False)
    alfa.pipeline(tiny_backbone, options, "bottle", text_cache=cache)
    (prompts,) = alfa.prompt_sets(options, "bottle")
    assert prompts.frame == ALFA_FRAME == options.text_frame
    assert (cache.hits, cache.misses) == (0, 1) and list(cache.memo) == [cache.key(list(prompts.texts), ALFA_FRAME)]
    # what a Ray actor gets: the cache without the model, bound to its own copy; no text is encoded again
    travelled = pickle.loads(pickle.dumps(cache)).bind(tiny_backbone)
    assert pickle.loads(pickle.dumps(cache)).backbone is None

    def no_model(texts):
        raise AssertionError("the text encoder ran on the actor")

    monkeypatch.setattr(tiny_backbone, "encode_texts", no_model)
    alfa.pipeline(tiny_backbone, options, "bottle", text_cache=travelled)
    assert (travelled.hits, travelled.misses) == (1, 0)


@pytest.mark.parametrize("method, extra", [("fade", []), ("filo", ["--positions"]), ("alfa", ["--windows", "2"])])
def test_prompts_embed_warms_exactly_the_keys_detect_uses(capsys, monkeypatch, image_dir, tmp_path, method, extra):
    cache = tmp_path / "cache"
    flags = ["--method", method, "--class", "metal_nut", *TINY, *OWN_FLAGS[method], *extra]
    code, _, stderr = run(capsys, monkeypatch, "prompts", "embed", *flags, "--cache-dir", str(cache))
    assert code == 0, stderr
    files = sorted((cache / "text").glob("*.npy"))
    assert files and f"{len(files)} embedded" in stderr
    code, _, stderr = run(capsys, monkeypatch, "detect", str(image_dir / "img0.png"), *flags, "--cache-dir", str(cache))
    assert code == 0, stderr
    assert f"text cache {len(files)} hit(s), 0 miss(es)" in stderr
    assert sorted((cache / "text").glob("*.npy")) == files


def test_explain_reports_the_pipelines_fallback_when_the_filter_keeps_nothing(capsys, monkeypatch, image_dir, tmp_path):
    import fade_cli.methods.rtp as rtp

    img = str(image_dir / "img0.png")
    args = ["explain", img, "--class", "bottle", "--method", "alfa", "--json", "--top", "2", *TINY]
    monkeypatch.setattr(rtp, "keep_mask", lambda sim_n, sim_a, rule="alfa": (sim_n.new_zeros(
        sim_n.shape[0], sim_n.shape[1] + sim_a.shape[1]) > 0))
    code, stdout, stderr = run(capsys, monkeypatch, *args, cache=tmp_path)
    assert code == 0, stderr
    res = json.loads(stdout)
    # the filter kept nothing; scoring then uses every prompt of each state, and explain says so
    assert res["kept"] == res["prompts"] == {"normal": 144, "anomalous": 144}  # the alfa bank, per label
    assert all(e["kept"] for state in ("normal", "anomalous") for e in res[state])


def test_every_command_that_builds_a_method_takes_every_method_flag():
    """Method flags are declared once (cli/common.METHOD_FLAGS) and every command that builds a
    method takes them all, so e.g. a calibration can be made with the settings a detect run uses."""
    import typer.main

    from fade_cli.cli import app
    from fade_cli.cli.common import METHOD_FLAGS
    from fade_cli.methods import get_method, method_names

    root = typer.main.get_command(app)
    declared = set().union(*(get_method(n).flags for n in method_names()))
    assert declared <= set(METHOD_FLAGS) | {"scales"}  # every method's flags have a CLI option
    commands = {"detect": root.commands["detect"], "segment": root.commands["segment"], "eval": root.commands["eval"],
                "calibrate": root.commands["calibrate"], "bank build": root.commands["bank"].commands["build"],
                "prompts embed": root.commands["prompts"].commands["embed"]}
    for name, command in commands.items():
        params = {p.name for p in command.params}
        wanted = set(METHOD_FLAGS) - ({"vision_feature"} if name == "bank build" else set())
        assert wanted <= params, (name, sorted(wanted - params))
