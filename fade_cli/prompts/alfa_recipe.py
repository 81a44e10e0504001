"""ALFA's prompt recipe (sec. 4.2, Table 3): the template part of a per-class prompt set.

The unified template "A {domain} image of a {state} {class} [with {details}]" is used with and
without details, with several domains and state words:
- without details: TEMPLATES (six domains) × STATE_PHRASES (twelve per state) = 72 prompts per
  label, the paper's "72 manual" template prompts;
- with details: each LLM detail phrase with DETAIL_STATES_PER_PHRASE state words (rotating
  through DETAIL_STATE_WORDS) in the class's own domain.
The LLM descriptions ("A normal / An abnormal image of {class} ...") come on top. The shipped
`alfa` bank (2.x) and `fade prompts generate` both compose their ALFA part this way.
"""

from __future__ import annotations

# One template per domain; the first uses the class's own domain ({domain} of its section).
TEMPLATES = (
    "A {domain} image of {state} {class}.",
    "An industrial image of {state} {class}.",
    "A close-up image of {state} {class}.",
    "A factory image of {state} {class}.",
    "A high-resolution image of {state} {class}.",
    "A quality-control image of {state} {class}.",
)
# State phrases carry their article ("an intact"), so the sentences read right.
STATE_PHRASES = {
    "normal": ("a flawless", "a perfect", "an intact", "a normal", "an unblemished", "a good", "an undamaged",
               "a pristine", "a defect-free", "a clean", "a sound", "a regular"),
    "anomalous": ("a damaged", "a defective", "a broken", "an abnormal", "a flawed", "a faulty", "an imperfect",
                  "a blemished", "an anomalous", "an impaired", "a marred", "a substandard"),
}
DETAIL_STATE_WORDS = {
    "normal": ("a normal", "a flawless", "a perfect", "an intact", "an unblemished", "a good"),
    "anomalous": ("an abnormal", "a damaged", "a defective", "a broken", "a flawed", "a faulty"),
}
DETAIL_STATES_PER_PHRASE = 4


def template_prompts(state: str) -> list[str]:
    """The 72 template prompts without details of one state ({domain} and {class} left as placeholders)."""
    return [t.replace("{state}", s) for t in TEMPLATES for s in STATE_PHRASES[state]]


def detail_prompts(state: str, details: list[str]) -> list[str]:
    """Each detail phrase in the template with DETAIL_STATES_PER_PHRASE state words (rotating), in
    the class's domain: "A {domain} image of a flawless {class} with <detail>."."""
    words = DETAIL_STATE_WORDS[state]
    out = []
    for i, detail in enumerate(details):
        detail = detail.strip().rstrip(".")
        for j in range(DETAIL_STATES_PER_PHRASE):
            out.append(f"A {{domain}} image of {words[(i * DETAIL_STATES_PER_PHRASE + j) % len(words)]} "
                       f"{{class}} with {detail}.")
    return out
