"""Prompt banks: schema validation with JSON paths, composition, the shipped banks, official format."""

import json

import pytest

from fade_cli.errors import PromptBankError
from fade_cli.prompts.banks import load_bank, shipped_banks, validate_bank

GOOD = {"schema_version": 1, "name": "mine", "version": "1.2.3", "description": "d",
        "generation": {"method": "manual"}, "placeholders": ["class"],
        "templates": ["a photo of the {state}", "a close-up of a {state}"],
        "states": {"normal": ["flawless {class}"], "anomalous": ["broken {class}", "{class} with a crack"]},
        "prompts": {"normal": ["a clean surface"], "anomalous": []},
        "classes": {"metal_nut": {"anomalous": ["a {class} with a bent tip"]}, "generic": {"normal": ["an intact {class}"]}}}


def test_good_bank_validates_and_composes(tmp_path):
    assert validate_bank(GOOD) == []
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(GOOD))
    bank = load_bank(str(path))
    assert bank.label == "mine@1.2.3" and len(bank.sha256) == 64
    assert bank.texts("anomalous", "metal_nut") == [
        "a photo of the broken metal nut", "a photo of the metal nut with a crack",
        "a close-up of a broken metal nut", "a close-up of a metal nut with a crack", "a metal nut with a bent tip"]
    # classes the bank does not name get the generic section
    assert bank.texts("normal", "screw") == ["a photo of the flawless screw", "a close-up of a flawless screw",
                                             "a clean surface", "an intact screw"]


@pytest.mark.parametrize("mutate, path", [
    (lambda b: b.update(schema_version=2), "$.schema_version"),
    (lambda b: b.pop("name"), "$.name: missing"),
    (lambda b: b.update(name="Bad Name"), "$.name"),
    (lambda b: b.update(version="1.0"), "$.version"),
    (lambda b: b["generation"].update(method="magic"), "$.generation.method"),
    (lambda b: b.update(placeholders=["class", "colour"]), "$.placeholders[1]"),
    (lambda b: b["templates"].append("no state here"), "$.templates[2]"),
    (lambda b: b["prompts"]["normal"].append("a {pos} scratch"), "$.prompts.normal[1]: placeholder {pos}"),
    (lambda b: b["prompts"]["normal"].append(""), "$.prompts.normal[1]"),
    (lambda b: b["classes"]["metal_nut"].update(anomalous="text"), "$.classes.metal_nut.anomalous"),
    (lambda b: b.update(extra=1), "$.extra: unknown key"),
    (lambda b: b["prompts"].update(broken=[]), "$.prompts.broken"),
])
def test_each_schema_error_names_its_json_path(mutate, path):
    bank = json.loads(json.dumps(GOOD))
    mutate(bank)
    errs = validate_bank(bank)
    assert any(e.startswith(path) for e in errs), errs


def test_load_errors_are_one_line(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PromptBankError, match="not valid JSON"):
        load_bank(str(tmp_path / "bad.json"))
    with pytest.raises(PromptBankError, match="no such prompt bank"):
        load_bank("nope")
    bank = dict(GOOD, version="x")
    (tmp_path / "v.json").write_text(json.dumps(bank))
    with pytest.raises(PromptBankError, match=r"\$\.version"):
        load_bank(str(tmp_path / "v.json"))


def test_official_fade_format_is_accepted(tmp_path):
    path = tmp_path / "winclip_prompt.json"
    path.write_text(json.dumps({"normal": {"instruction": "", "prompts": ["flawless {classname}"]},
                                "abnormal": {"instruction": "", "prompts": ["damaged {classname}", "a crack"]}}))
    bank = load_bank(str(path))
    assert bank.texts("normal", "pcb1") == ["flawless pcb1"]
    assert bank.texts("anomalous", "metal_nut") == ["damaged metal nut", "a crack"]


def test_winclip_bank_is_the_published_ensemble():
    bank = load_bank("winclip")
    normal, anomalous = bank.texts("normal", "bottle"), bank.texts("anomalous", "bottle")
    assert (len(normal), len(anomalous)) == (154, 88)  # 22 templates × 7 / × 4 (FADE sec. 3.1)
    assert normal[1] == "a cropped photo of the flawless bottle" and anomalous[0] == "a cropped photo of the damaged bottle"
    assert len(set(normal)) == 154 and len(set(anomalous)) == 88


OBJECT_WORDS = ["bottle", "cable", "capsule", "carpet", "hazelnut", "leather", "screw", "tile", "toothbrush",
                "transistor", "wood", "zipper", "candle", "cashew", "pcb", "fryum", "macaroni", "pill"]


def test_fade_llm_bank_is_object_agnostic_and_large():
    assert "fade-llm" in shipped_banks()
    bank = load_bank("fade-llm")
    for state in ("normal", "anomalous"):
        texts = bank.texts(state, "bottle")
        assert len(texts) >= 400 and len({t.lower() for t in texts}) == len(texts)
        words = {w.strip(".,;:!?'\"()").lower() for t in texts for w in t.split()}
        assert not words & set(OBJECT_WORDS), words & set(OBJECT_WORDS)
    assert len(bank.data["generation"]["instructions"]) >= 5
