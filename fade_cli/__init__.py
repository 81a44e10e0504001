"""fade: training-free zero-/few-shot industrial anomaly detection (FADE, ALFA)."""

__version__ = "0.1.0"
