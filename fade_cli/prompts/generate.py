"""Generate a versioned prompt bank for a new product class with an LLM.

Any OpenAI-compatible chat-completions endpoint will do (`POST {url}/chat/completions`). The
instructions follow the papers' recipes:

- FADE (object-agnostic): several wordings asking for short descriptions of a photo of a
  damaged / an undamaged object without naming any object -> `prompts.normal/anomalous`.
- ALFA (per class, sec. 4.2 / Table 3, composed as in `alfa_recipe`): the 72 template prompts
  "A {domain} image of a {state} {class}" (6 domains × 12 state phrases), detail phrases put
  into "... {class} with {details}" with 4 state words each (per_state/4 phrases asked), and
  the answers to "How to identify an abnormal/a normal {class} in an image?" as sentences
  "An abnormal image of {class} ..." / "A normal image of {class} ...".
- FiLo (per class): "Based on your knowledge, what anomalies might occur on {class}?" -> short
  anomaly types, used as "{class} with <anomaly>" (the text frame adds "a photo of a").

The per-class texts go to `classes.<class>` with the literal class name replaced by `{class}`.
Every instruction sent is recorded in `generation.instructions`; the result always passes
`fade_cli.prompts.validate_bank`. The HTTP client and reply parsing are in prompts/llm.py.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import tempfile
from pathlib import Path

from . import alfa_recipe
from .banks import SCHEMA_VERSION, validate_bank
from .llm import (  # noqa: F401 - the client and parsers are part of this module's interface
    MAX_ITEM_CHARS, GenerationError, LLMClient, _class_regex, _dedup, _refused, _short, clean_item, parse_items,
)

MIN_PER_STATE = 10  # fewer usable prompts than this for a state is an error
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# ---------------------------------------------------------------------------------------------
# Instructions (the papers' recipes) and the bank
# ---------------------------------------------------------------------------------------------

_FORMAT = " Reply with a JSON array of strings only, without numbering or any other text."

_FADE_WORDINGS = {
    "anomalous": [
        "Give {n} different short descriptions of a photo of a damaged object, such as a manufactured part, "
        "a product or a material with a defect. Describe only what is visibly wrong; do not name any specific "
        "kind of object (say 'object' instead).",
        "List {n} short phrases describing how a damaged object looks in an industrial inspection photo "
        "(cracks, scratches, holes, stains, missing or deformed parts and the like). Keep each phrase "
        "object-agnostic: do not name what the object is.",
        "What can be seen in a close-up photo of a damaged object? Write {n} brief descriptions that would "
        "fit any kind of object, without naming an object.",
    ],
    "normal": [
        "Give {n} different short descriptions of a photo of an undamaged object, such as a manufactured part, "
        "a product or a material in perfect condition. Describe only how it looks; do not name any specific "
        "kind of object (say 'object' instead).",
        "List {n} short phrases describing how an undamaged object looks in an industrial inspection photo "
        "(intact, clean, smooth, uniform, complete and the like). Keep each phrase object-agnostic: do not "
        "name what the object is.",
        "What can be seen in a close-up photo of an undamaged object? Write {n} brief descriptions that would "
        "fit any kind of object, without naming an object.",
    ],
}


def _alfa_question(state: str, spoken: str, n: int) -> str:
    article, word, lead = ("an", "abnormal", "An abnormal") if state == "anomalous" else ("a", "normal", "A normal")
    return (f"How to identify {article} {word} {spoken} in an image? Give {n} different answers, each one "
            f"sentence that starts with \"{lead} image of {spoken}\" and names one visual sign.")


def _alfa_details(state: str, spoken: str, n: int) -> str:
    if state == "anomalous":
        return (f"List {n} short phrases describing visual details of an abnormal {spoken} in an industrial "
                f"inspection image (a defect, its location, size, shape or color), each phrase completing the "
                f"sentence \"An image of an abnormal {spoken} with ...\".")
    return (f"List {n} short phrases describing visual details of a normal {spoken} in an industrial "
            f"inspection image (its shape, color, surface, texture or parts), each phrase completing the "
            f"sentence \"An image of a normal {spoken} with ...\".")


def _filo_question(spoken: str, n: int) -> str:
    return (f"Based on your knowledge, what anomalies might occur on {spoken}? Give {n} short anomaly types "
            "of a few words each (a kind of defect, optionally where it is).")


def generate_bank(client: LLMClient, class_name: str, name: str | None = None, per_state: int = 50,
                  date: str | None = None) -> dict:
    """A new prompt bank (schema_version 1) for `class_name`, asked of `client`.

    `per_state` items are asked for (and at most that many kept) per instruction. Raises
    GenerationError when the endpoint fails, refuses, or too few usable texts come back.
    """
    cls = str(class_name).strip()
    if not cls or "{" in cls or "}" in cls:
        raise GenerationError(f"{class_name!r}: not a usable class name")
    spoken = cls.replace("_", " ")
    slug = re.sub(r"[^a-z0-9._-]+", "-", cls.lower()).strip("-._")
    if not slug:
        raise GenerationError(f"{class_name!r}: the class name gives no bank name; pass a name")
    name = f"{slug}-llm" if name is None else name
    if not _NAME_RE.match(name):
        raise GenerationError(f"{name!r}: a bank name uses lower-case letters, digits, '.', '_' and '-' only")
    if date is None:
        date = _dt.date.today().isoformat()
    try:
        if not _DATE_RE.match(date):
            raise ValueError
        _dt.date.fromisoformat(date)
    except (TypeError, ValueError):
        raise GenerationError(f"{date!r}: expected a date YYYY-MM-DD") from None
    if not isinstance(per_state, int) or per_state < 1:
        raise GenerationError(f"per_state must be a positive integer, got {per_state!r}")

    class_re = _class_regex(cls)
    sent: list[str] = []

    def ask(instruction: str) -> list[str]:
        sent.append(instruction)
        content = client.chat(instruction)
        if _refused(content):
            raise GenerationError(f"the model refused to answer {_short(instruction)!r}: {_short(content, 120)!r}")
        items = _dedup([t for t in (clean_item(i) for i in parse_items(content)) if 0 < len(t) <= MAX_ITEM_CHARS])
        if not items:
            raise GenerationError(f"the model refused or gave no usable items for {_short(instruction)!r} "
                                  f"(the answer starts {_short(content, 80)!r})")
        return items[:per_state]

    def per_class(text: str) -> str:
        return " ".join(class_re.sub("{class}", text).split())

    # FADE: object-agnostic descriptions; drop any that name the class.
    agnostic: dict[str, list[str]] = {}
    for state in ("anomalous", "normal"):
        texts = []
        for wording in _FADE_WORDINGS[state]:
            texts += [t for t in ask(wording.format(n=per_state) + _FORMAT) if not class_re.search(t)]
        agnostic[state] = _dedup(texts)

    # ALFA: template prompts without and with LLM details (each detail with several state words), then
    # the LLM sentences; the detail phrases are asked per_state/4 at a time to keep ALFA's proportions.
    section = {state: alfa_recipe.template_prompts(state) for state in ("normal", "anomalous")}
    alfa_sentences: dict[str, list[str]] = {}
    for state in ("anomalous", "normal"):
        alfa_sentences[state] = [per_class(t) for t in ask(_alfa_question(state, spoken, per_state) + _FORMAT)]
    n_details = max(1, round(per_state / alfa_recipe.DETAIL_STATES_PER_PHRASE))
    for state in ("anomalous", "normal"):
        details = [re.sub(r"^with\s+", "", t, flags=re.I)
                   for t in ask(_alfa_details(state, spoken, n_details) + _FORMAT)[:n_details]]
        section[state] += alfa_recipe.detail_prompts(state, [per_class(d) for d in details if d])
    for state in ("anomalous", "normal"):
        section[state] += alfa_sentences[state]

    # FiLo: anomaly types.
    anomalies = ask(_filo_question(spoken, per_state) + _FORMAT)
    section["anomalous"] += [f"{{class}} with {per_class(a)}" for a in anomalies]
    section = {s: _dedup(v) for s, v in section.items()}

    # the template prompts are ours, not the model's: only what the model gave counts here
    counts = {s: len(agnostic[s]) + len(section[s]) - len(alfa_recipe.template_prompts(s)) for s in ("normal", "anomalous")}
    if min(counts.values()) < MIN_PER_STATE:
        raise GenerationError(
            f"too few usable prompts for {cls!r}: got {counts['normal']} normal and {counts['anomalous']} "
            f"anomalous (at least {MIN_PER_STATE} per state needed); ask for more per state or try another model")

    used = {p for texts in (*agnostic.values(), *section.values()) for t in texts
            for p in ("class", "domain", "details", "pos") if "{" + p + "}" in t}
    placeholders = ["class", "domain"] + [p for p in ("details", "pos") if p in used]
    bank = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": "1.0.0",
        "description": (f"LLM-generated prompts for the class '{cls}' ({client.model}): object-agnostic descriptions "
                        "of damaged / undamaged objects (FADE recipe), ALFA normal / abnormal sentences and "
                        "detail phrases, and FiLo anomaly types for the class."),
        "license": "generated; check the terms of the model provider",
        "generation": {"method": "llm", "model": client.model, "date": date, "instructions": sent},
        "placeholders": placeholders,
        "prompts": {"normal": agnostic["normal"], "anomalous": agnostic["anomalous"]},
        "classes": {cls: {"domain": "industrial", "normal": section["normal"], "anomalous": section["anomalous"]}},
    }
    errs = validate_bank(bank)
    if errs:
        more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
        raise GenerationError(f"the generated bank is invalid: {errs[0]}{more}")
    return bank


def write_bank(bank: dict, path: Path, overwrite: bool = False) -> None:
    """Write `bank` as JSON to `path` atomically (temp file in the same folder + os.replace).

    Refuses an existing file unless `overwrite`, and an invalid bank.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise GenerationError(f"{path}: already exists; choose another path or allow overwriting")
    errs = validate_bank(bank)
    if errs:
        raise GenerationError(f"refusing to write an invalid bank to {path}: {errs[0]}")
    text = json.dumps(bank, indent=2, ensure_ascii=False) + "\n"
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise GenerationError(f"{parent}: no such directory")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise GenerationError(f"{path}: cannot write ({exc.strerror or exc.__class__.__name__})") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
