"""The shipped ALFA and FiLo banks follow their papers' recipes; older versions stay loadable."""

from __future__ import annotations

import re
import statistics

import pytest

from fade_cli.prompts import alfa_recipe
from fade_cli.prompts.banks import load_bank
from fade_cli.prompts.text import DEFAULT_FRAME

def alfa_classes():
    return sorted(load_bank("alfa").data["classes"])


def test_alfa_bank_has_table_3_shape():
    bank = load_bank("alfa")
    assert bank.label == "alfa@2.0.0"
    counts = []
    for cls in alfa_classes():
        for state in ("normal", "anomalous"):
            texts = bank.texts(state, cls)
            counts.append(len(texts))
            name, domain = cls.replace("_", " "), bank.data["classes"][cls]["domain"]
            # 72 template prompts without details: 6 domains (one the class's own) × 12 state phrases
            plain = [t for t in texts if re.fullmatch(rf"An? [\w -]+ image of an? [\w-]+ {name}\.", t)]
            assert len(plain) == 72 and len(set(plain)) == 72
            assert {t.split(" image of ")[0] for t in plain} == {
                "A " + domain, "An industrial", "A close-up", "A factory", "A high-resolution", "A quality-control"}
            for phrase in alfa_recipe.STATE_PHRASES[state]:
                assert f"An industrial image of {phrase} {name}." in plain
            # with details: each LLM detail phrase with 4 state words in the class's domain
            detailed = [t for t in texts if t.startswith(f"A {domain} image of ") and " with " in t]
            details = {t.split(f" {name} with ", 1)[1] for t in detailed}
            assert len(detailed) == 4 * len(details) == 48
            # LLM descriptions: "A normal / An abnormal image of {class} ..."
            lead = "A normal image of " if state == "normal" else "An abnormal image of "
            assert sum(t.startswith(lead + name) for t in texts) == 24
            assert len(texts) == len(set(texts))
    assert all(88 <= c <= 216 for c in counts)  # the paper's range per label
    assert abs(statistics.mean(counts) - 146) < 5  # and its mean


def test_alfa_bank_1_0_0_still_loads():
    old = load_bank("alfa@1.0.0")
    assert old.label == "alfa@1.0.0"
    assert len(old.texts("normal", "bottle")) == len(old.texts("anomalous", "bottle")) == 48
    new = load_bank("alfa").texts("anomalous", "bottle")
    assert set(old.texts("anomalous", "bottle")) & set(new)  # the LLM sentences carried over


def test_detail_prompts_rotate_state_words():
    got = alfa_recipe.detail_prompts("normal", ["a smooth rim.", "a clean body"])
    words = alfa_recipe.DETAIL_STATE_WORDS["normal"]
    assert got == [f"A {{domain}} image of {words[i % 6]} {{class}} with {d}." for i, d in
                   zip(range(8), ["a smooth rim"] * 4 + ["a clean body"] * 4)]


@pytest.mark.parametrize("cls", sorted(load_bank("filo").data["classes"]))
def test_filo_texts_complete_the_frame_once(cls):
    bank = load_bank("filo")
    assert bank.label == "filo@2.0.0"
    for state in ("normal", "anomalous"):
        for text in bank.texts(state, cls, pos="at top left"):
            framed = DEFAULT_FRAME.replace("{prompt}", text)
            assert framed.count("photo") == 1 and not re.search(r"\b(a|an|the) (a|an|the)\b", framed), framed
    anomalous = bank.texts("anomalous", cls, pos="at top left")
    assert sum("at top left" in t for t in anomalous) >= len(anomalous) - 3 * 3  # all but the plain states


def test_filo_bank_1_0_0_still_loads():
    assert load_bank("filo@1.0.0").label == "filo@1.0.0"
