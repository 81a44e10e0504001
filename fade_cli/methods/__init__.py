"""Anomaly-detection methods by name: `get_method(name)`, `method_names()`.

A method is one module with its options dataclass, its pipeline and its entry (the protocol is
documented in methods/base.py); registering it is one line below. Entries are imported on first
use, so `fade --help` stays fast.
"""

from __future__ import annotations

import importlib

from ..errors import UsageError

DEFAULT_METHOD = "fade"

# name -> (module under fade_cli.methods, entry attribute, one line for --method help)
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "fade": ("fade", "FADE", "FADE (default): language + vision guidance"),
    "alfa": ("alfa", "ALFA", "ALFA: run-time prompt adaptation + fine-grained aligner"),
    "filo": ("fade", "FILO", "FADE with the training-free FiLo parts"),
    "musc": ("musc_batch", "MUSC", "MuSc: zero-shot mutual scoring of the images of a batch (no prompts, no references)"),
    "dino": ("dino", "DINO", "FADE's language guidance + a DINOv2 few-shot vision bank (AnomalyDINO)"),
}


def method_names() -> list[str]:
    return list(_REGISTRY)


def method_help() -> str:
    """One phrase per registered method, for the --method help text."""
    return "; ".join(f"{name}: {summary}" for name, (_, _, summary) in _REGISTRY.items())


def get_method(name: str):
    """The registry entry of a method (see methods/base.py); UsageError naming --method otherwise."""
    if name not in _REGISTRY:
        raise UsageError(f"--method {name}: expected one of {', '.join(_REGISTRY)}")
    module, attribute, _ = _REGISTRY[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)


def method_flags() -> frozenset[str]:
    """Every CLI parameter some method declares (the ones an inapplicable-flag check looks at)."""
    return frozenset().union(*(get_method(name).flags for name in _REGISTRY))
