"""The `fade` command: thin parsing and printing around the library; no method logic here.

Exit status: 0 every image processed, 1 some inputs failed (one stderr line each), 2 usage
or set-up errors (bad options, model or prompt bank cannot load), 130 interrupted.
Results go to stdout as JSON lines; logs and progress go to stderr.

One module per command group (score: detect + segment, eval, bank, prompts, explain, demo, report);
`app` is the typer application, `main` the console entry point.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer
from rich.console import Console

from .. import __version__
from ..data.inputs import shown
from ..errors import FadeError
from . import bank, calibrate, demo, explain, prompts, report, score
from . import eval as eval_commands

app = typer.Typer(
    name="fade",
    help="Training-free industrial anomaly detection and segmentation with CLIP (FADE).\n\n"
    "Zero-shot from language alone, or few-shot from a handful of good reference images (--refs).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command()(score.detect)
app.command()(score.segment)
app.command("eval")(eval_commands.eval_command)
app.command("demo-data")(demo.demo_data)
app.add_typer(bank.bank_app, name="bank")
app.command("calibrate")(calibrate.calibrate_command)
app.command()(explain.explain)
app.add_typer(prompts.prompts_app, name="prompts")
app.command()(report.report)


def _version(value: bool) -> None:
    if value:
        print(f"fade {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Training-free industrial anomaly detection and segmentation with CLIP (FADE)."""


def _terminate(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Click's ClickException and Abort classes: newer typer releases vendor click as
    `typer._click`, older ones use `click` itself; usage errors may come from either."""
    import importlib

    errors, aborts = [], [typer.Abort]
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        errors += [c for c in (getattr(module, "ClickException", None),) if c is not None]
        aborts += [c for c in (getattr(module, "Abort", None),) if c is not None]
    return tuple(errors), tuple(aborts)


def main() -> None:
    """Console entry point: FadeErrors become one stderr line and exit status 2."""
    # cron and batch systems stop jobs with SIGTERM: handle it like Ctrl-C (clean stop, exit 130)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(standalone_mode=False)
    except FadeError as exc:
        print(f"fade: error: {shown(str(exc))}", file=sys.stderr)  # a newline in a file name stays escaped: one line
        sys.exit(2)
    except KeyboardInterrupt:
        print("fade: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors and the like
        usage_errors, aborts = _click_exception_types()
        if isinstance(exc, usage_errors):  # one line, like every other fade error
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            print(f"fade: error: {shown(exc.format_message())}{hint}", file=sys.stderr)
            sys.exit(exc.exit_code)
        if isinstance(exc, aborts):
            print("fade: interrupted", file=sys.stderr)
            sys.exit(130)
        if os.environ.get("FADE_DEBUG"):
            raise
        # a bug or an environment failure (out of memory, CUDA error): one line, exit 70 (EX_SOFTWARE)
        reason = "out of memory" if isinstance(exc, MemoryError) else f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        print(f"fade: internal error: {reason} (FADE_DEBUG=1 shows the traceback)", file=sys.stderr)
        sys.exit(70)
    code = code if isinstance(code, int) else 0
    if code == 130:  # typer turns Ctrl-C into exit status 130 without a word
        print("fade: interrupted", file=sys.stderr)
    sys.exit(code)
