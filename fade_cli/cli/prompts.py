"""`fade prompts list|show|validate|generate|embed`: work with prompt banks."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..errors import UsageError
from ..methods import DEFAULT_METHOD
from ..model.backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .common import (
    CacheOpt, ClassOpt, DeviceOpt, MethodOpt, ModelOpt, PrecisionOpt, PretrainedOpt, QuietOpt, ScalesOpt,
    command_values, log, with_method_flags,
)


prompts_app = typer.Typer(help="List, show, validate and pre-embed prompt banks.", no_args_is_help=True)


@prompts_app.command("list")
def prompts_list(as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False) -> None:
    """The shipped banks with versions and prompt counts (for the class 'object')."""
    from rich.table import Table

    from ..prompts.banks import load_bank, shipped_banks

    rows = []
    for name in sorted(shipped_banks()):
        b = load_bank(name)
        classes = sorted(b.data.get("classes", {}))
        # the name it loads by: "alfa@1.0.0" for a shipped older version
        rows.append({"name": name, "version": b.version, "normal": len(b.texts("normal", "object")),
                     "anomalous": len(b.texts("anomalous", "object")), "classes": len(classes),
                     "method": b.data["generation"].get("method"), "description": b.data["description"]})
    if as_json:
        for r in rows:
            print(json.dumps(r))
        return
    table = Table("bank", "version", "normal", "anomalous", "classes", "method")
    for r in rows:
        table.add_row(r["name"], r["version"], str(r["normal"]), str(r["anomalous"]), str(r["classes"]), r["method"] or "")
    Console().print(table)


@prompts_app.command("show")
def prompts_show(
    bank: Annotated[str, typer.Argument(help="Shipped bank name or JSON path.")],
    class_name: ClassOpt = "object",
    state: Annotated[Optional[str], typer.Option("--state", help="normal or anomalous (default: both).")] = None,
) -> None:
    """Print the composed prompts of a bank for a class, one per line, as `state<TAB>text`."""
    from ..prompts.banks import STATES, load_bank

    if state is not None and state not in STATES:
        raise UsageError(f"--state {state}: expected normal or anomalous")
    b = load_bank(bank)
    for s in [state] if state else STATES:
        for text in b.texts(s, class_name):
            print(f"{s}\t{text}")


@prompts_app.command("validate")
def prompts_validate(files: Annotated[list[Path], typer.Argument(help="Bank JSON files to check.")]) -> None:
    """Check bank files against the schema; every error is printed with its JSON path. Exit 1 if any is invalid."""
    from ..prompts.banks import _is_official, validate_bank

    bad = 0
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            print(f"fade: {f}: cannot read as JSON ({exc})", file=sys.stderr)
            bad += 1
            continue
        errs = [] if _is_official(data) else validate_bank(data)
        for e in errs:
            print(f"fade: {f}: {e}", file=sys.stderr)
        bad += bool(errs)
        if not errs:
            print(f"{f}: ok" + (" (official FADE format)" if _is_official(data) else ""))
    raise typer.Exit(1 if bad else 0)


@prompts_app.command("generate")
def prompts_generate(
    class_name: Annotated[str, typer.Option("--class", "-c", help="The new product class, e.g. gear_wheel.")],
    llm_url: Annotated[str, typer.Option("--llm-url", help="Base URL of an OpenAI-compatible chat endpoint, e.g. http://localhost:8000/v1.")],
    llm_model: Annotated[str, typer.Option("--model", help="Model name the endpoint serves.")] = "gpt-4o-mini",
    api_key_env: Annotated[Optional[str], typer.Option("--api-key-env", help="Name of the environment variable holding the API key (never pass keys on the command line).", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Bank file to write. Default: CLASS-llm.json.", show_default=False)] = None,
    per_state: Annotated[int, typer.Option("--per-state", min=1, help="Items asked for in each instruction.")] = 50,
    timeout: Annotated[float, typer.Option("--timeout", min=1.0, help="Seconds per request.")] = 60.0,
    retries: Annotated[int, typer.Option("--retries", min=0, help="Extra attempts on connection errors, timeouts, 429 and 5xx.")] = 3,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a new versioned prompt bank for a product class by asking an LLM with the FADE, ALFA and FiLo recipes."""
    import os

    from ..prompts.generate import LLMClient, generate_bank, write_bank

    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise UsageError(f"--api-key-env {api_key_env}: that environment variable is not set")
    client = LLMClient(url=llm_url, model=llm_model, api_key=key, timeout=timeout, retries=retries)
    log(quiet, f"asking {client.endpoint} ({llm_model}) for '{class_name}' prompts")
    bank = generate_bank(client, class_name, per_state=per_state)
    path = output or Path(f"{bank['name']}.json")
    write_bank(bank, path, overwrite=overwrite)
    cls_section = bank.get("classes", {}).get(class_name, {})
    log(quiet, f"wrote {path}: {len(bank['prompts']['normal'])} + {len(cls_section.get('normal', []))} normal, "
                f"{len(bank['prompts']['anomalous'])} + {len(cls_section.get('anomalous', []))} anomalous prompts "
                f"(object-agnostic + per-class); check it with `fade prompts show {path} --class {class_name}`")
    print(str(path))


@prompts_app.command("embed")
@with_method_flags()
def prompts_embed(
    ctx: typer.Context,
    banks: Annotated[Optional[list[str]], typer.Argument(help="Bank names or paths to pre-embed for --class, in the method's text frame(s). Default: every prompt the method uses for --class.", show_default=False)] = None,
    class_name: ClassOpt = "object",
    method: MethodOpt = DEFAULT_METHOD,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    scales: ScalesOpt = "240,448,896",
    cache_dir: CacheOpt = None,
    quiet: QuietOpt = False,
    **method_flags,
) -> None:
    """Compute and cache text embeddings before going offline or onto a new machine: every prompt
    set `--method` encodes for `--class` with these flags (the keys `fade detect` looks up), or the
    given banks in the method's text frame(s)."""
    from ..methods import get_method
    from ..methods.base import PromptSet
    from ..prompts.banks import load_bank
    from ..prompts.text import TextEncoderCache
    from .common import scorer_spec

    spec = scorer_spec(ctx, method, class_name, model, pretrained, device, precision,
                       command_values(locals(), method_flags))
    sets = get_method(spec.method).prompt_sets(spec.options, class_name)
    if banks:
        loaded = [load_bank(b) for b in banks]
        texts = tuple(t for state in ("normal", "anomalous") for b in loaded for t in b.texts(state, class_name, pos=""))
        sets = [PromptSet(texts, frame) for frame in dict.fromkeys(s.frame for s in sets)]
    from ..engines.runner import load_spec_backbone

    backbone = load_spec_backbone(spec)
    cache = TextEncoderCache(backbone, cache_dir)
    t = time.perf_counter()
    for prompt_set in sets:
        cache.encode(list(prompt_set.texts), prompt_set.frame)
    n = sum(len(s.texts) for s in sets)
    log(quiet, f"{spec.method}, class {class_name}: {len(sets)} prompt set(s), {n} prompts; {cache.hits} cached already, "
               f"{cache.misses} embedded, in {time.perf_counter() - t:.1f} s under {cache.dir}")
