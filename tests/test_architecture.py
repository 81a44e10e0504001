"""The layering of docs/architecture.md: lower layers never import the CLI, and no module imports
from a layer above its own (found by scanning every import of fade_cli, lazy ones included)."""

import ast
from pathlib import Path

import fade_cli

PACKAGE = Path(fade_cli.__file__).parent
# bottom to top; a module may import its own layer and the ones before it
LAYERS = ["errors", "data", "model", "prompts", "methods", "decisions", "evaluation", "report", "engines", "cli"]
# evaluation runs pipelines through the runner's ScorerSpec / build_pipeline (engines is a peer);
# run_benchmark ends by writing its report page (report reads evaluation's outputs: a peer too)
ALLOWED_UPWARD = {("evaluation", "engines"), ("evaluation", "report")}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "fade_cli":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "package"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every fade_cli import in a file."""
    package = ".".join(("fade_cli", *path.relative_to(PACKAGE).parent.parts))
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                out += [(node.lineno, f"{target}.{a.name}" if not node.module else target) for a in node.names]
            elif node.module and node.module.startswith("fade_cli"):
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("fade_cli")]
    return out


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "prompt_banks" not in p.parts)


def test_scanner_sees_relative_and_lazy_imports():
    found = dict(_imports(PACKAGE / "cli" / "score.py"))
    assert "fade_cli.engines.runner" in found.values() and "fade_cli.cli.common" in found.values()


def test_nothing_outside_the_cli_imports_it():
    offenders = [f"{p.relative_to(PACKAGE)}:{line} imports {target}" for p in _modules() if p.parent.name != "cli"
                 and p.name != "__main__.py" for line, target in _imports(p) if target.startswith("fade_cli.cli")]
    assert not offenders, "\n".join(offenders)


def test_no_module_imports_a_layer_above_its_own():
    offenders = []
    for p in _modules():
        here = p.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if here not in LAYERS:
            continue
        for line, target in _imports(p):
            there = _layer(target)
            if there in LAYERS and LAYERS.index(there) > LAYERS.index(here) and (here, there) not in ALLOWED_UPWARD:
                offenders.append(f"{p.relative_to(PACKAGE)}:{line} ({here}) imports {target} ({there})")
    assert not offenders, "\n".join(offenders)


def test_no_module_is_over_450_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long
