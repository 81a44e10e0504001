"""Prompt-bank generation against a local stub OpenAI-compatible server (127.0.0.1 only)."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


from fade_cli.errors import FadeError
from fade_cli.prompts import alfa_recipe
from fade_cli.prompts.generate import GenerationError, LLMClient, clean_item, generate_bank, parse_items, write_bank
from fade_cli.prompts.banks import load_bank, validate_bank

# --------------------------------------------------------------------------------------------
# The stub server
# --------------------------------------------------------------------------------------------

LONG = "x" * 301


def items_for(instruction: str, cls: str = "bottle") -> list[str]:
    """Plausible answers picked by the instruction's wording."""
    low = instruction.lower()
    if "undamaged" in low:
        return ["intact object with a smooth surface", "Intact object with a smooth surface",  # dedup
                "clean object without scratches", "object with uniform color", "flawless object surface",
                "object with sharp, straight edges", f"perfect {cls} standing upright",  # names the class: dropped
                "", LONG, "object with {weird} braces"]
    if "damaged" in low:
        return ["object with a deep scratch", "OBJECT WITH A DEEP SCRATCH", "cracked object surface",
                "object with a missing piece", "dented object", "object with a dark stain",
                f"broken {cls} neck", "   ", LONG]
    if "anomalies" in low:
        return ["crack in the glass", "broken neck", f"contamination inside the {cls}", "Crack in the glass"]
    if "abnormal" in low:
        if "how to identify" in low:
            return [f"An abnormal image of {cls} shows a crack", f"An abnormal image of {cls} shows a broken rim",
                    f"An abnormal image of {cls} has dirt on the {cls}s"]
        return ["a chipped rim", "with a scratch on the side", "a foreign particle"]
    if "normal" in low:
        if "how to identify" in low:
            return [f"A normal image of {cls} shows a round rim", f"A normal image of {cls} is clean and intact"]
        return ["a smooth round rim", "a uniform transparent body", f"a {cls.upper()} cap"]
    return ["something"]


def completion(content, finish_reason="stop") -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "finish_reason": finish_reason, "message": {"role": "assistant", "content": content}}]}).encode()


class Stub:
    """Records requests; `respond(stub, req) -> (status, headers, body)` decides each answer."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.release = threading.Event()  # wakes slow handlers at teardown
        self.cls = "bottle"
        self.respond = json_answer

    @property
    def instructions(self) -> list[str]:
        return [r["body"]["messages"][0]["content"] for r in self.requests]


def json_answer(stub: Stub, req: dict):
    return 200, {}, completion(json.dumps(items_for(req["instruction"], stub.cls)))


def make_handler(stub: Stub):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            n = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(n) or b"{}")
            req = {"path": self.path, "headers": dict(self.headers), "body": body,
                   "instruction": body.get("messages", [{}])[0].get("content", "")}
            with stub.lock:
                stub.requests.append(req)
                req["n"] = len(stub.requests)
            status, headers, data = stub.respond(stub, req)
            self.send_response(status)
            headers = {"Content-Type": "application/json", **headers}
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return Handler


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that timed out and left is expected


@pytest.fixture()
def stub():
    s = Stub()
    server = QuietServer(("127.0.0.1", 0), make_handler(s))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    s.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield s
    finally:
        s.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def _local_only(monkeypatch):
    """No proxy: every request goes straight to 127.0.0.1."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")


def client(stub, **kw) -> LLMClient:
    kw = {"timeout": 5.0, "retries": 2, "backoff": 0.01, **kw}
    return LLMClient(stub.url, **kw)


CLASS_WORD = re.compile(r"(?<![a-z0-9])bottles?(?![a-z0-9])", re.I)

# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def test_generated_bank_validates_and_records_every_instruction(stub, tmp_path):
    bank = generate_bank(client(stub, model="stub-model"), "bottle", per_state=20, date="2024-05-01")
    assert validate_bank(bank) == []
    assert bank["name"] == "bottle-llm" and bank["version"] == "1.0.0" and bank["schema_version"] == 1
    assert bank["license"].startswith("generated")
    gen = bank["generation"]
    assert gen["method"] == "llm" and gen["model"] == "stub-model" and gen["date"] == "2024-05-01"
    assert gen["instructions"] == stub.instructions and len(gen["instructions"]) == 11
    assert all("JSON array" in i for i in gen["instructions"])
    assert set(bank["placeholders"]) >= {"class", "domain"}
    # the recipes' wordings
    assert sum("damaged object" in i and "undamaged" not in i for i in gen["instructions"]) == 3
    assert sum("undamaged object" in i for i in gen["instructions"]) == 3
    assert any(i.startswith("How to identify an abnormal bottle in an image?") for i in gen["instructions"])
    assert any(i.startswith("How to identify a normal bottle in an image?") for i in gen["instructions"])
    assert any(i.startswith("Based on your knowledge, what anomalies might occur on bottle?") for i in gen["instructions"])
    # every request: the model, temperature 0.7, one user message, the chat-completions path
    for r in stub.requests:
        assert r["path"] == "/v1/chat/completions"
        assert r["body"]["model"] == "stub-model" and r["body"]["temperature"] == 0.7
        assert [m["role"] for m in r["body"]["messages"]] == ["user"]
        assert "Authorization" not in r["headers"]

    section = bank["classes"]["bottle"]
    assert section["domain"] == "industrial"
    for state in ("normal", "anomalous"):
        texts = section[state]
        assert texts and not any(CLASS_WORD.search(t) for t in texts), texts
        keys = [t.lower() for t in texts]
        assert len(keys) == len(set(keys))
    # ALFA's shape (Table 3): the 72 template prompts, each detail with 4 state words, then the sentences
    for state in ("normal", "anomalous"):
        assert section[state][:72] == alfa_recipe.template_prompts(state)
    assert section["normal"][72:76] == [f"A {{domain}} image of {w} {{class}} with a smooth round rim."
                                        for w in ("a normal", "a flawless", "a perfect", "an intact")]
    assert "A {domain} image of a good {class} with a {class} cap." in section["normal"]  # any case replaced
    assert "A {domain} image of an abnormal {class} with a chipped rim." in section["anomalous"]
    assert "A {domain} image of a flawed {class} with a scratch on the side." in section["anomalous"]  # no "with with"
    assert len([t for t in section["normal"] if " with " in t and t.startswith("A {domain}")]) == 3 * 4
    assert "An abnormal image of {class} has dirt on the {class}s" in section["anomalous"]
    assert "A normal image of {class} is clean and intact" in section["normal"]
    # FiLo's anomaly types complete the text frame "a photo of a {prompt}." (no frame of their own)
    assert "{class} with crack in the glass" in section["anomalous"]
    assert "{class} with contamination inside the {class}" in section["anomalous"]
    assert sum(t.lower() == "{class} with crack in the glass" for t in section["anomalous"]) == 1
    assert not any(t.lower().startswith("a photo of") for t in section["anomalous"])

    prompts = bank["prompts"]
    # object-agnostic: texts naming the class dropped, duplicates (any case) once, empty/overlong dropped
    assert prompts["normal"] == ["intact object with a smooth surface", "clean object without scratches",
                                 "object with uniform color", "flawless object surface",
                                 "object with sharp, straight edges", "object with weird braces"]
    assert prompts["anomalous"] == ["object with a deep scratch", "cracked object surface",
                                    "object with a missing piece", "dented object", "object with a dark stain"]
    for texts in (*prompts.values(), *section.values()):
        for t in texts:
            assert 0 < len(t) <= 300
            assert not re.sub(r"\{(class|domain)\}", "", t).count("{") and "}" not in re.sub(r"\{(class|domain)\}", "", t)

    # written and read back by the loader, placeholders filled
    path = tmp_path / "bottle-llm.json"
    write_bank(bank, path)
    loaded = load_bank(str(path))
    assert loaded.label == "bottle-llm@1.0.0"
    normal = loaded.texts("normal", "bottle")
    assert "A industrial image of a normal bottle with a smooth round rim." in normal
    assert "An industrial image of a flawless bottle." in normal
    assert "intact object with a smooth surface" in normal


def test_class_with_underscore_and_spaces_in_answers(stub):
    stub.cls = "metal nut"
    bank = generate_bank(client(stub), "metal_nut", per_state=12, date="2024-01-02")
    assert bank["name"] == "metal_nut-llm" and "metal_nut" in bank["classes"]
    assert any("abnormal metal nut in an image?" in i for i in bank["generation"]["instructions"])
    section = bank["classes"]["metal_nut"]
    assert "An abnormal image of {class} shows a crack" in section["anomalous"]
    assert "A {domain} image of a good {class} with a {class} cap." in section["normal"]
    for t in section["normal"] + section["anomalous"] + bank["prompts"]["normal"] + bank["prompts"]["anomalous"]:
        assert not re.search(r"metal[ _-]?nut", t, re.I), t


def test_custom_name_and_default_date(stub):
    import datetime

    bank = generate_bank(client(stub), "Bottle", name="my-bank.v2", per_state=5)
    assert bank["name"] == "my-bank.v2" and "Bottle" in bank["classes"]
    assert bank["generation"]["date"] == datetime.date.today().isoformat()
    # per_state caps each answer; ALFA's detail phrases are asked per_state / 4 at a time
    assert len(bank["classes"]["Bottle"]["anomalous"]) <= 72 + 4 * 1 + 2 * 5
    details = [i for i in bank["generation"]["instructions"] if i.startswith("List 1 short phrases")]
    assert len(details) == 2
    assert all("5" in i for i in bank["generation"]["instructions"] if i not in details)


@pytest.mark.parametrize("fmt", ["fenced", "numbered", "object", "bullets"])
def test_answer_formats(stub, fmt):
    def respond(s, req):
        items = items_for(req["instruction"], s.cls)
        items = [i for i in items if i.strip()]
        if fmt == "fenced":
            text = "Sure! Here you go:\n```json\n" + json.dumps(items, indent=1) + "\n```\nHope this helps."
        elif fmt == "numbered":
            text = "Here are the descriptions:\n" + "\n".join(f"{k + 1}. {t}" for k, t in enumerate(items))
        elif fmt == "object":
            text = json.dumps({"descriptions": items})
        else:
            text = "\n".join(f"- \"{t}\"," for t in items)
        return 200, {}, completion(text)

    stub.respond = respond
    bank = generate_bank(client(stub), "bottle", per_state=20, date="2024-05-01")
    assert validate_bank(bank) == []
    assert "object with a deep scratch" in bank["prompts"]["anomalous"]
    assert "A normal image of {class} shows a round rim" in bank["classes"]["bottle"]["normal"]
    every = [t for v in bank["prompts"].values() for t in v] + \
            [t for v in bank["classes"]["bottle"].values() if isinstance(v, list) for t in v]
    assert not any(t.startswith(("1.", "-", "Here are", "Sure", "```", '"')) for t in every)


@pytest.mark.parametrize("content, expected", [
    ('["a", "b"]', ["a", "b"]),
    ('```json\n["a", "b"]\n```', ["a", "b"]),
    ('```\n["a"]\n```', ["a"]),
    ('{"items": ["a", "b"], "count": 2}', ["a", "b"]),
    ('Here:\n["a", "b"]\nThanks', ["a", "b"]),
    ("1. a\n2) b\n(3) c\n10. d", ["a", "b", "c", "d"]),
    ("Here are some:\n1. a\n2. b\nLet me know!", ["a", "b"]),
    ("* a\n- b\n\u2022 c", ["a", "b", "c"]),
    ("Descriptions:\na\nb", ["a", "b"]),
    ("1.5 mm scratch\nb", ["1.5 mm scratch", "b"]),
    ("[]", []),
    ('{"normal": ["x"], "anomalous": ["y"]}', []),  # which list is meant is unknown: nothing usable
    ('"one\\ntwo"', ["one", "two"]),
])
def test_parse_items(content, expected):
    assert parse_items(content) == expected


def test_clean_item():
    assert clean_item('  "a deep   scratch."  ') == "a deep scratch"
    assert clean_item("**crack**,") == "crack"
    assert clean_item("a {pos} stain") == "a pos stain"
    assert clean_item("\u201cquoted\u201d") == "quoted"


def test_authorization_header_sent_with_api_key(stub):
    out = client(stub, api_key="sk-test-123").chat("Give 3 damaged object descriptions")
    assert json.loads(out)[0] == "object with a deep scratch"
    assert stub.requests[0]["headers"]["Authorization"] == "Bearer sk-test-123"


def test_url_forms(stub):
    for url in (stub.url + "/", stub.url + "/chat/completions"):
        LLMClient(url, retries=0).chat("normal")
    assert [r["path"] for r in stub.requests] == ["/v1/chat/completions"] * 2
    with pytest.raises(GenerationError, match="not an http"):
        LLMClient("ftp://127.0.0.1/v1").chat("x")


# --------------------------------------------------------------------------------------------
# Retries and errors
# --------------------------------------------------------------------------------------------


def test_500_twice_then_success_is_retried(stub):
    def respond(s, req):
        if req["n"] <= 2:
            return 500, {}, b'{"error": "overloaded"}'
        return json_answer(s, req)

    stub.respond = respond
    t0 = time.perf_counter()
    out = client(stub, retries=3, backoff=0.01).chat("List undamaged object phrases")
    assert "intact object with a smooth surface" in out
    assert len(stub.requests) == 3  # two retries
    assert time.perf_counter() - t0 < 2


def test_5xx_gives_up_after_retries(stub):
    stub.respond = lambda s, req: (503, {}, b"upstream down " * 40)
    with pytest.raises(GenerationError, match=r"HTTP 503 .*after 3 attempts") as exc:
        client(stub, retries=2).chat("x")
    assert len(stub.requests) == 3
    assert len(str(exc.value)) < 350  # the body is cut to 200 characters


def test_429_is_retried_then_reported(stub):
    stub.respond = lambda s, req: (429, {}, b'{"error": {"message": "Rate limit reached"}}')
    with pytest.raises(GenerationError, match=r"HTTP 429 \(rate limited\).*Rate limit reached"):
        client(stub, retries=1).chat("x")
    assert len(stub.requests) == 2


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_point_to_api_key_env(stub, status):
    stub.respond = lambda s, req: (status, {}, b'{"error": "bad key sk-secret"}')
    with pytest.raises(GenerationError, match=rf"HTTP {status}.*check --api-key-env") as exc:
        client(stub, api_key="wrong").chat("x")
    assert len(stub.requests) == 1  # not retried
    assert "sk-secret" not in str(exc.value)


def test_other_http_error_gives_status_and_body_start(stub):
    body = "model 'nope' does not exist " + "y" * 400
    stub.respond = lambda s, req: (404, {}, body.encode())
    with pytest.raises(GenerationError) as exc:
        client(stub).chat("x")
    msg = str(exc.value)
    assert "HTTP 404" in msg and "model 'nope' does not exist" in msg and "y" * 250 not in msg
    assert len(stub.requests) == 1


def test_reply_not_json(stub):
    stub.respond = lambda s, req: (200, {"Content-Type": "text/html"}, b"<html><body>Welcome</body></html>")
    with pytest.raises(GenerationError, match="not JSON"):
        client(stub).chat("x")


def test_reply_without_choices(stub):
    stub.respond = lambda s, req: (200, {}, b'{"error": {"message": "no such model"}}')
    with pytest.raises(GenerationError, match="no choices.*no such model"):
        client(stub).chat("x")
    stub.respond = lambda s, req: (200, {}, b'{"choices": []}')
    with pytest.raises(GenerationError, match="no choices"):
        client(stub).chat("x")


@pytest.mark.parametrize("content", ["", "   \n", None])
def test_empty_answer(stub, content):
    stub.respond = lambda s, req: (200, {}, completion(content))
    with pytest.raises(GenerationError, match="empty answer"):
        generate_bank(client(stub), "bottle", date="2024-05-01")


@pytest.mark.parametrize("content", [
    "I'm sorry, but I can't help with that request.",
    "I can\u2019t provide that.",
    "As an AI language model, I do not see images.",
    '["", "   "]',
    "[]",
])
def test_refusal(stub, content):
    stub.respond = lambda s, req: (200, {}, completion(content))
    with pytest.raises(GenerationError, match="refused"):
        generate_bank(client(stub), "bottle", date="2024-05-01")
    assert len(stub.requests) == 1  # stops at the first refusal


def test_content_filter_is_a_refusal(stub):
    stub.respond = lambda s, req: (200, {}, completion(None, finish_reason="content_filter"))
    with pytest.raises(GenerationError, match="content filter"):
        client(stub).chat("x")


def test_too_few_items(stub):
    stub.respond = lambda s, req: (200, {}, completion(json.dumps(items_for(req["instruction"])[:1])))
    with pytest.raises(GenerationError, match=r"too few usable prompts for 'bottle': got \d+ normal and \d+ anomalous"):
        generate_bank(client(stub), "bottle", date="2024-05-01")
    assert len(stub.requests) == 11


def test_timeout_after_retries(stub):
    def respond(s, req):
        s.release.wait(3)
        return json_answer(s, req)

    stub.respond = respond
    t0 = time.perf_counter()
    with pytest.raises(GenerationError, match=r"timed out after 0.5 s \(2 attempts\)"):
        client(stub, timeout=0.5, retries=1, backoff=0.01).chat("x")
    assert time.perf_counter() - t0 < 2.5
    assert len(stub.requests) == 2


def test_connection_refused_names_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(GenerationError, match="connection refused") as exc:
        LLMClient(url, retries=1, backoff=0.01, timeout=2).chat("x")
    assert f"{url}/chat/completions" in str(exc.value)


def test_dns_failure_names_the_host(monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)  # nothing leaves this machine
    with pytest.raises(GenerationError, match="cannot resolve host 'llm.invalid'.*http://llm.invalid:8000/v1"):
        LLMClient("http://llm.invalid:8000/v1", retries=2, backoff=0.01).chat("x")


def test_errors_are_fade_errors_and_one_line(stub):
    stub.respond = lambda s, req: (500, {}, b"line one\nline two\n\n   line three")
    with pytest.raises(FadeError) as exc:
        client(stub, retries=0).chat("x")
    assert isinstance(exc.value, GenerationError) and "\n" not in str(exc.value)
    assert "line one line two line three" in str(exc.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"class_name": "  "}, "not a usable class name"),
    ({"class_name": "{x}"}, "not a usable class name"),
    ({"class_name": "bottle", "name": "Bad Name"}, "bank name"),
    ({"class_name": "bottle", "date": "01/02/2024"}, "YYYY-MM-DD"),
    ({"class_name": "bottle", "date": "2024-02-30"}, "YYYY-MM-DD"),
    ({"class_name": "bottle", "per_state": 0}, "per_state"),
])
def test_bad_arguments_fail_before_any_request(stub, kwargs, match):
    with pytest.raises(GenerationError, match=match):
        generate_bank(client(stub), **kwargs)
    assert stub.requests == []


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _bank(stub) -> dict:
    return generate_bank(client(stub), "bottle", per_state=20, date="2024-05-01")


def test_write_bank_refuses_overwrite_and_is_atomic(stub, tmp_path, monkeypatch):
    bank = _bank(stub)
    path = tmp_path / "b.json"
    write_bank(bank, path)
    first = path.read_text()
    assert json.loads(first) == bank and first.endswith("\n")
    with pytest.raises(GenerationError, match="already exists"):
        write_bank(dict(bank, version="2.0.0"), path)
    assert path.read_text() == first

    # a failure at the final rename leaves the old file whole and no temp file behind
    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(GenerationError, match="cannot write.*No space left"):
        write_bank(dict(bank, version="2.0.0"), path, overwrite=True)
    assert path.read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]
    monkeypatch.undo()

    write_bank(dict(bank, version="2.0.0"), path, overwrite=True)
    assert json.loads(path.read_text())["version"] == "2.0.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]


def test_write_bank_uses_a_temp_file_in_the_same_folder(stub, tmp_path, monkeypatch):
    bank = _bank(stub)
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((Path(src), Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_bank(bank, tmp_path / "out.json")
    (src, dst), = seen
    assert src.parent == dst.parent == tmp_path and src.name != "out.json"


def test_write_bank_refuses_invalid_bank_and_missing_folder(stub, tmp_path):
    bank = _bank(stub)
    with pytest.raises(GenerationError, match="invalid bank.*name"):
        write_bank(dict(bank, name="Bad Name"), tmp_path / "x.json")
    with pytest.raises(GenerationError, match="no such directory"):
        write_bank(bank, tmp_path / "missing" / "x.json")
    assert list(tmp_path.iterdir()) == []


def test_cli_prompts_generate_writes_a_loadable_bank(stub, tmp_path, monkeypatch, capsys):
    import sys as _sys

    from fade_cli.cli import main
    from fade_cli.prompts.banks import load_bank

    stub.respond = json_answer
    monkeypatch.setenv("MY_KEY", "sekrit")
    out = tmp_path / "gear.json"
    argv = ["fade", "prompts", "generate", "--class", "gear_wheel", "--llm-url", stub.url, "--api-key-env", "MY_KEY",
            "-o", str(out), "--per-state", "20", "--timeout", "5", "-q"]
    monkeypatch.setattr(_sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == str(out)
    bank = load_bank(str(out))
    assert bank.texts("anomalous", "gear_wheel") and "gear_wheel" in bank.data["classes"]
    assert all(r["headers"].get("Authorization") == "Bearer sekrit" for r in stub.requests)
    monkeypatch.setattr(_sys, "argv", argv)  # a second run must not overwrite
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "exists" in capsys.readouterr().err
    monkeypatch.setattr(_sys, "argv", [a if a != "MY_KEY" else "UNSET_KEY" for a in argv])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "UNSET_KEY" in capsys.readouterr().err
