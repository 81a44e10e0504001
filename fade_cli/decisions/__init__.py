"""Decisions a production line acts on: thresholds calibrated from good images, defect regions
of a binary mask, and the JSONL / CSV rows that carry them (docs/calibration.md)."""
