"""Evaluation: the papers' metrics and the per-class benchmark loop (`run_benchmark`)."""
