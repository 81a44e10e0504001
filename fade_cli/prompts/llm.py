"""The LLM side of prompt generation: an OpenAI-compatible chat client (standard library HTTP,
retries on connection errors, timeouts, 429 and 5xx) and the parsing of its replies into clean
prompt items (JSON arrays, fenced code, bullet or numbered lists; refusals detected)."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from ..errors import FadeError

MAX_ITEM_CHARS = 300  # longer items are dropped
TEMPERATURE = 0.7
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
