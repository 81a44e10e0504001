"""Prompt banks: versioned JSON files of normal / anomalous prompts, their validation and composition.

Banks are JSON (docs/prompt-banks.md has the schema). Files in the official FADE repository's
format (`{"normal": {"prompts": [...]}, "abnormal": {"prompts": [...]}}` with `{classname}`)
are read too.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


from ..errors import PromptBankError

SCHEMA_VERSION = 1
STATES = ("normal", "anomalous")
PLACEHOLDERS = ("class", "domain", "details", "pos")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


@dataclass(frozen=True)
class PromptBank:
    name: str
    version: str
    sha256: str  # of the file's bytes: results and caches record exactly which content ran
    data: dict
    source: str  # shipped bank name or file path

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def texts(self, state: str, class_name: str, pos: str | None = None) -> list[str]:
        """The prompts of one state for a class, placeholders filled (underscores -> spaces).

        `pos` fills {pos} (FiLo's position phrase, e.g. "at top left"; "" drops it); None
        leaves {pos} as written."""
        d = self.data
        out = [t.replace("{state}", s) for t in d.get("templates", []) for s in d.get("states", {}).get(state, [])]
        out += d.get("prompts", {}).get(state, [])
        classes = d.get("classes", {})
        section = classes.get(class_name) or classes.get("generic") or {}
        out += section.get(state, [])
        values = {"class": class_name.replace("_", " "), "domain": section.get("domain", "industrial")}
        if pos is not None:
            values["pos"] = pos
        return [_fill(t, values) for t in out]


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return " ".join(text.split())


def _placeholders_in(text: str) -> set[str]:
    try:
        return {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError:
        return {"<unbalanced braces>"}


def validate_bank(data: object) -> list[str]:
    """Every schema error, each as '<json path>: <problem>'. Empty list = valid."""
    errs: list[str] = []
    if not isinstance(data, dict):
        return ["$: a bank is a JSON object"]

    def need(key: str, kind: type, where: str = "$") -> object:
        if key not in data:
            errs.append(f"{where}.{key}: missing")
            return None
        if not isinstance(data[key], kind):
            errs.append(f"{where}.{key}: expected {kind.__name__}")
            return None
        return data[key]

    if data.get("schema_version") != SCHEMA_VERSION:
        errs.append(f"$.schema_version: expected {SCHEMA_VERSION}, got {data.get('schema_version')!r}")
    name = need("name", str)
    if isinstance(name, str) and not _NAME_RE.match(name):
        errs.append("$.name: lower-case letters, digits, '.', '_' and '-' only")
    version = need("version", str)
    if isinstance(version, str) and not _VERSION_RE.match(version):
        errs.append("$.version: expected MAJOR.MINOR.PATCH")
    need("description", str)
    gen = need("generation", dict)
    if isinstance(gen, dict) and gen.get("method") not in ("llm", "compositional", "manual"):
        errs.append("$.generation.method: expected llm, compositional or manual")
    declared = need("placeholders", list)
    declared_set = set(declared) if isinstance(declared, list) else set()
    for i, p in enumerate(declared or []):
        if p not in PLACEHOLDERS:
            errs.append(f"$.placeholders[{i}]: unknown placeholder {p!r} (known: {', '.join(PLACEHOLDERS)})")

    def check_texts(texts: object, path: str, allowed: set[str]) -> int:
        if not isinstance(texts, list):
            errs.append(f"{path}: expected a list of strings")
            return 0
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                errs.append(f"{path}[{i}]: expected a non-empty string")
                continue
            for p in _placeholders_in(t) - allowed:
                errs.append(f"{path}[{i}]: placeholder {{{p}}} is not declared")
        return len(texts)

    counts = dict.fromkeys(STATES, 0)
    templates = data.get("templates")
    if templates is not None:
        check_texts(templates, "$.templates", declared_set | {"state"})
        for i, t in enumerate(templates if isinstance(templates, list) else []):
            if isinstance(t, str) and "{state}" not in t:
                errs.append(f"$.templates[{i}]: a template must contain {{state}}")
        states = data.get("states")
        if not isinstance(states, dict):
            errs.append("$.states: required with templates (object with normal and anomalous)")
        else:
            for s in STATES:
                n = check_texts(states.get(s, []), f"$.states.{s}", declared_set)
                counts[s] += n * len(templates if isinstance(templates, list) else [])
    prompts = data.get("prompts", {})
    if not isinstance(prompts, dict):
        errs.append("$.prompts: expected an object with normal and anomalous lists")
    else:
        for key in prompts:
            if key not in STATES:
                errs.append(f"$.prompts.{key}: unknown state (expected normal or anomalous)")
        for s in STATES:
            counts[s] += check_texts(prompts.get(s, []), f"$.prompts.{s}", declared_set)
    classes = data.get("classes", {})
    if not isinstance(classes, dict):
        errs.append("$.classes: expected an object")
    else:
        for cname, section in classes.items():
            where = f"$.classes.{cname}"
            if not isinstance(section, dict):
                errs.append(f"{where}: expected an object")
                continue
            for s in STATES:
                if s in section:
                    check_texts(section[s], f"{where}.{s}", declared_set)
            if "domain" in section and not isinstance(section["domain"], str):
                errs.append(f"{where}.domain: expected a string")
    if not classes and (counts["normal"] == 0 or counts["anomalous"] == 0):
        errs.append("$: the bank gives no prompts for a state (needs normal and anomalous prompts)")
    for key in data:
        if key not in {"schema_version", "name", "version", "description", "license", "generation",
                       "placeholders", "templates", "states", "prompts", "classes"}:
            errs.append(f"$.{key}: unknown key")
    return errs


def _from_official(data: dict, source: str) -> dict:
    """The official FADE repository's prompt file -> our schema ({classname} -> {class})."""
    def texts(key: str) -> list[str]:
        return [str(t).replace("{classname}", "{class}") for t in data[key]["prompts"]]

    return {
        "schema_version": SCHEMA_VERSION,
        "name": re.sub(r"[^a-z0-9._-]", "-", Path(source).stem.lower()) or "official",
        "version": "0.0.0",
        "description": f"official FADE prompt file {Path(source).name}",
        "generation": {"method": "manual", "instructions": [data[k].get("instruction", "") for k in ("abnormal", "normal")]},
        "placeholders": ["class"],
        "prompts": {"normal": texts("normal"), "anomalous": texts("abnormal")},
    }


def _is_official(data: object) -> bool:
    return (isinstance(data, dict) and "schema_version" not in data
            and all(isinstance(data.get(k), dict) and isinstance(data[k].get("prompts"), list) for k in ("normal", "abnormal")))


def shipped_banks() -> dict[str, Path]:
    """Name -> path of every bank shipped in prompt_banks/."""
    root = resources.files("fade_cli.prompt_banks")
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".json")}


def load_bank(name_or_path: str) -> PromptBank:
    """A shipped bank by name, or a JSON file (our schema or the official FADE format)."""
    shipped = shipped_banks()
    path = shipped.get(name_or_path)
    if path is None:
        path = Path(name_or_path)
        if not path.is_file():
            raise PromptBankError(
                f"{name_or_path}: no such prompt bank (shipped: {', '.join(sorted(shipped))}; or a path to a JSON file)"
            )
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptBankError(f"{path}: cannot read ({exc.__class__.__name__})") from None
    except json.JSONDecodeError as exc:
        raise PromptBankError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if _is_official(data):
        data = _from_official(data, str(path))
    errs = validate_bank(data)
    if errs:
        more = f" (and {len(errs) - 1} more; run `fade prompts validate {path}`)" if len(errs) > 1 else ""
        raise PromptBankError(f"{path}: {errs[0]}{more}")
    return PromptBank(name=data["name"], version=data["version"], sha256=hashlib.sha256(raw).hexdigest(),
                      data=data, source=name_or_path)
