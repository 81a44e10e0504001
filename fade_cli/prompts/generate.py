"""Generate a versioned prompt bank for a new product class with an LLM.

Any OpenAI-compatible chat-completions endpoint will do (`POST {url}/chat/completions`). The
instructions follow the papers' recipes:

- FADE (object-agnostic): several wordings asking for short descriptions of a photo of a
  damaged / an undamaged object without naming any object -> `prompts.normal/anomalous`.
- ALFA (per class): "How to identify an abnormal/a normal {class} in an image?", answered as
  sentences "An abnormal image of {class} ..." / "A normal image of {class} ...", plus detail
  phrases for the template "A {domain} image of a {state} {class} with {details}".
- FiLo (per class): "Based on your knowledge, what anomalies might occur on {class}?" -> short
  anomaly types, used as "a photo of a {class} with <anomaly>".

The per-class texts go to `classes.<class>` with the literal class name replaced by `{class}`.
Every instruction sent is recorded in `generation.instructions`; the result always passes
`fade_cli.prompts.validate_bank`. Standard library only (urllib) for HTTP.
"""

from __future__ import annotations

import datetime as _dt
import http.client
import json
import os
import re
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import FadeError
from .banks import SCHEMA_VERSION, validate_bank

MIN_PER_STATE = 10  # fewer usable prompts than this for a state is an error
MAX_ITEM_CHARS = 300  # longer items are dropped
TEMPERATURE = 0.7
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_REFUSALS = ("i'm sorry", "i am sorry", "sorry,", "sorry but", "i apologize", "i apologise", "i can't", "i cannot",
             "i can not", "i won't", "i will not", "i'm unable", "i am unable", "i'm not able", "i am not able",
             "as an ai")


class GenerationError(FadeError):
    """Prompt generation failed; the message is one line (newlines and runs of spaces collapsed)."""

    def __init__(self, message: object) -> None:
        super().__init__(" ".join(str(message).split()))


def _short(text: str, n: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


# ---------------------------------------------------------------------------------------------
# HTTP client
# ---------------------------------------------------------------------------------------------


@dataclass
class LLMClient:
    """A minimal OpenAI-compatible chat-completions client (urllib, proxies from the environment)."""

    url: str  # base URL, e.g. http://127.0.0.1:8000/v1 ; POST {url}/chat/completions
    model: str = "gpt-4o-mini"
    api_key: str | None = None  # sent as "Authorization: Bearer ..." when given
    timeout: float = 60.0
    retries: int = 3  # extra attempts on connection errors, timeouts, HTTP 429 and 5xx
    backoff: float = 1.0  # seconds before the first retry, doubled for each next one

    @property
    def endpoint(self) -> str:
        """The chat-completions URL (a URL already ending in /chat/completions is used as is)."""
        base = str(self.url).strip().rstrip("/")
        parts = urllib.parse.urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise GenerationError(f"{self.url!r}: not an http(s) URL (expected e.g. http://127.0.0.1:8000/v1)")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"

    def _sleep(self, attempt: int, retry_after: str | None = None) -> None:
        delay = max(0.0, float(self.backoff)) * (2 ** attempt)
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), 60.0))
            except ValueError:
                pass  # an HTTP date: keep our own backoff
        time.sleep(delay)

    def chat(self, instruction: str) -> str:
        """One user message at temperature 0.7; returns choices[0].message.content.

        Raises GenerationError (one line) for every failure: unreachable server, timeout, HTTP
        error, a reply that is not a chat completion, an empty answer, a content-filter stop or
        an explicit refusal.
        """
        endpoint = self.endpoint
        body = json.dumps({"model": self.model, "temperature": TEMPERATURE,
                           "messages": [{"role": "user", "content": instruction}]}).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "fade-cli"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempts = max(0, int(self.retries)) + 1
        opener = urllib.request.build_opener()  # reads proxy settings from the environment now
        raw = b""
        for attempt in range(attempts):
            last = attempt == attempts - 1
            request = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
            try:
                with opener.open(request, timeout=self.timeout) as resp:
                    raw = resp.read()
                break
            except urllib.error.HTTPError as exc:
                status = exc.code
                try:
                    text = exc.read(4096).decode("utf-8", "replace")
                except Exception:  # noqa: BLE001 - the body is only for the message
                    text = ""
                finally:
                    exc.close()
                if status in (401, 403):
                    word = "unauthorised" if status == 401 else "forbidden"
                    raise GenerationError(f"{endpoint}: HTTP {status} ({word}); check --api-key-env "
                                          "(the API key is missing, wrong or has no access to this model)") from None
                snippet = _short(text, 200) if text.strip() else "(empty body)"
                if status == 429 or 500 <= status <= 599:
                    if not last:
                        self._sleep(attempt, exc.headers.get("Retry-After") if exc.headers else None)
                        continue
                    what = "rate limited" if status == 429 else "server error"
                    raise GenerationError(f"{endpoint}: HTTP {status} ({what}) after {attempts} attempts: "
                                          f"{snippet}") from None
                raise GenerationError(f"{endpoint}: HTTP {status} {exc.reason}: {snippet}") from None
            except urllib.error.URLError as exc:
                reason = exc.reason
                if isinstance(reason, socket.gaierror):
                    host = urllib.parse.urlsplit(endpoint).hostname
                    raise GenerationError(f"cannot resolve host {host!r} of {endpoint} "
                                          f"({reason.strerror or reason}); check the URL") from None
                if isinstance(reason, TimeoutError):
                    if not last:
                        self._sleep(attempt)
                        continue
                    raise GenerationError(f"{endpoint}: timed out after {self.timeout:g} s "
                                          f"({attempts} attempts)") from None
                if not last:
                    self._sleep(attempt)
                    continue
                if isinstance(reason, ConnectionRefusedError):
                    raise GenerationError(f"cannot connect to {endpoint}: connection refused "
                                          f"({attempts} attempts); is the server running?") from None
                why = getattr(reason, "strerror", None) or str(reason)
                raise GenerationError(f"cannot connect to {endpoint}: {why} ({attempts} attempts)") from None
            except TimeoutError:  # while reading the answer
                if not last:
                    self._sleep(attempt)
                    continue
                raise GenerationError(f"{endpoint}: timed out after {self.timeout:g} s ({attempts} attempts)") from None
            except (OSError, http.client.HTTPException) as exc:  # reset, remote disconnected, bad status line
                if not last:
                    self._sleep(attempt)
                    continue
                raise GenerationError(f"{endpoint}: connection failed ({exc.__class__.__name__}: {exc}) "
                                      f"after {attempts} attempts") from None
        return _content_of(raw, endpoint, instruction)


def _content_of(raw: bytes, endpoint: str, instruction: str) -> str:
    """choices[0].message.content of a chat-completions reply, or a one-line GenerationError."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        start = raw[:60].decode("utf-8", "replace")
        raise GenerationError(f"{endpoint}: the reply is not JSON (it starts {start!r}); "
                              "is the URL an OpenAI-compatible base such as http://host:port/v1?") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            err = err.get("message", err)
        detail = f" (error: {_short(str(err), 200)})" if err else ""
        raise GenerationError(f"{endpoint}: the reply has no choices{detail}")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    if choice.get("finish_reason") == "content_filter":
        raise GenerationError(f"the model's answer was blocked by the provider's content filter (refused) "
                              f"for {_short(instruction)!r}")
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal.strip():
        raise GenerationError(f"the model refused to answer {_short(instruction)!r}: {_short(refusal, 120)!r}")
    content = message.get("content")
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    if not isinstance(content, str) or not content.strip():
        raise GenerationError(f"the model gave an empty answer to {_short(instruction)!r}")
    return content


# ---------------------------------------------------------------------------------------------
# Parsing answers
# ---------------------------------------------------------------------------------------------

_NOTHING = object()
_FENCE_RE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n?(.*?)```", re.S)
_MARKER_RE = re.compile(r"^(?:[-*\u2022\u00b7\u2013\u2014+]\s+|\(?\d{1,3}[.):\]]\s+|\d{1,3}\s+-\s+)")


def _json_or_nothing(text: str) -> object:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return _NOTHING


def _strings(value: object) -> list[str] | None:
    """The strings of a JSON array, or of the one list value of a JSON object; None if neither."""
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if len(lists) == 1 else None
    if isinstance(value, list):
        items = [v for v in value if isinstance(v, str)]
        return items or None
    return None


def parse_items(content: str) -> list[str]:
    """The raw items of an answer: a JSON array, a JSON object with one list value, either in a
    ```json fence or embedded in text; otherwise the answer's lines (numbering/bullets stripped,
    preamble lines dropped when some lines are numbered or bulleted)."""
    text = content.strip()
    fence = _FENCE_RE.search(text)
    candidates = [fence.group(1).strip()] if fence else []
    candidates.append(text)
    whole = len(candidates)  # the fenced block and the whole answer; then JSON embedded in text
    for open_, close in (("[", "]"), ("{", "}")):
        i, j = text.find(open_), text.rfind(close)
        if 0 <= i < j:
            candidates.append(text[i: j + 1])
    body = fence.group(1) if fence else text
    for k, cand in enumerate(candidates):
        value = _json_or_nothing(cand)
        if isinstance(value, str):  # a JSON string: read its lines
            body = value
            break
        items = _strings(value)
        if items is not None:
            return items
        if k < whole and isinstance(value, (list, dict)):
            return []  # the answer is JSON but holds no strings (e.g. [] or {}): nothing usable
    lines = [ln.strip() for ln in body.splitlines() if ln.strip() and ln.strip() not in ("[", "]", "{", "}", "```")]
    marked = [ln for ln in lines if _MARKER_RE.match(ln)]
    if marked:
        lines = marked
    elif len(lines) > 1 and lines[0].rstrip().endswith(":"):
        lines = lines[1:]  # "Here are 50 descriptions:" before unnumbered lines
    return [_MARKER_RE.sub("", ln, count=1) for ln in lines]


_QUOTES = {'"': '"', "'": "'", "`": "`", "\u201c": "\u201d", "\u2018": "\u2019"}


def clean_item(item: str) -> str:
    """One item as a prompt text: one line, no markdown emphasis, no enclosing quotes, no braces,
    no trailing punctuation ('' when nothing is left)."""
    text = " ".join(str(item).split()).replace("**", "").replace("__", "")
    text = text.replace("{", "").replace("}", "")  # only the placeholders we insert may use braces
    for _ in range(3):
        text = text.strip().rstrip(",;").strip()
        if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
            text = text[1:-1]
    return text.strip().rstrip(".;,:!").strip()


def _refused(content: str) -> bool:
    head = content.strip().lstrip("\"'`").lower().replace("\u2019", "'")
    return head.startswith(_REFUSALS)


def _class_regex(class_name: str) -> re.Pattern:
    """The class name as a word (any of ' ', '_', '-' between its words; a plural s/es allowed)."""
    words = [w for w in re.split(r"[\s_-]+", class_name.strip()) if w]
    body = r"[\s_-]+".join(re.escape(w) for w in words)
    return re.compile(rf"(?<![A-Za-z0-9]){body}(?=(?:e?s)?(?![A-Za-z0-9]))", re.I)


def _dedup(items: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for t in items:
        key = " ".join(t.casefold().split())
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


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


# ALFA's template "A {domain} image of a {state} {class} with {details}", the state filled in
# (with the article that fits it); {domain} and {class} stay placeholders.
_ALFA_TEMPLATE = {"normal": "A {{domain}} image of a normal {{class}} with {details}",
                  "anomalous": "A {{domain}} image of an abnormal {{class}} with {details}"}


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

    # ALFA: LLM sentences, and detail phrases put into the template.
    section: dict[str, list[str]] = {"normal": [], "anomalous": []}
    alfa_sentences: dict[str, list[str]] = {}
    for state in ("anomalous", "normal"):
        alfa_sentences[state] = [per_class(t) for t in ask(_alfa_question(state, spoken, per_state) + _FORMAT)]
    for state in ("anomalous", "normal"):
        details = [re.sub(r"^with\s+", "", t, flags=re.I) for t in ask(_alfa_details(state, spoken, per_state) + _FORMAT)]
        section[state] += [_ALFA_TEMPLATE[state].format(details=per_class(d)) for d in details if d]
    for state in ("anomalous", "normal"):
        section[state] += alfa_sentences[state]

    # FiLo: anomaly types.
    anomalies = ask(_filo_question(spoken, per_state) + _FORMAT)
    section["anomalous"] += [f"a photo of a {{class}} with {per_class(a)}" for a in anomalies]
    section = {s: _dedup(v) for s, v in section.items()}

    counts = {s: len(agnostic[s]) + len(section[s]) for s in ("normal", "anomalous")}
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
