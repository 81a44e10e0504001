"""Result rows on stdout, streamed one image at a time: JSON lines (every field) or CSV.

CSV has one row per image and the same columns in every row and every run of a command
(`DETECT_COLUMNS`, `SEGMENT_COLUMNS`); a field a row lacks is empty. Nested JSONL fields are
flattened: `banks` joined by ';', `outputs` as map/overlay/mask, `regions` as their count
and the bounding box and area of the largest one; booleans as true/false, as in JSON.
"""

from __future__ import annotations

import csv
import json
from typing import IO

DETECT_COLUMNS = ("path", "class", "score", "normalised_score", "anomalous", "threshold", "threshold_source",
                  "false_alarm_rate", "ms", "method", "shots", "banks")
SEGMENT_COLUMNS = DETECT_COLUMNS + ("pixel_threshold", "pixel_threshold_source", "map_max", "anomalous_fraction",
                                    "regions", "largest_x0", "largest_y0", "largest_x1", "largest_y1", "largest_area",
                                    "map", "overlay", "mask")
FORMATS = ("jsonl", "csv")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ";".join(_cell(v) for v in value)
    return str(value)


def flatten(row: dict) -> dict[str, str]:
    """A JSONL row as CSV cells (every column of SEGMENT_COLUMNS that the row can fill)."""
    flat = {k: v for k, v in row.items() if k not in ("outputs", "regions")}
    flat.update(row.get("outputs") or {})
    if "regions" in row:
        regions = row["regions"] or []
        flat["regions"] = len(regions)
        if regions:
            big = max(regions, key=lambda r: r["area"])  # first in peak order on ties
            flat.update(zip(("largest_x0", "largest_y0", "largest_x1", "largest_y1"), big["bbox"]))
            flat["largest_area"] = big["area"]
    return {k: _cell(v) for k, v in flat.items()}


class JsonlWriter:
    """One JSON object per line, flushed per row."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, row: dict) -> None:
        self.stream.write(json.dumps(row) + "\n")
        self.stream.flush()


class CsvWriter:
    """A header, then one row per image with `columns`, flushed per row (streaming)."""

    def __init__(self, stream: IO[str], columns: tuple[str, ...]):
        self.stream = stream
        self.columns = columns
        self.writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        self.writer.writeheader()
        stream.flush()

    def write(self, row: dict) -> None:
        self.writer.writerow(flatten(row))
        self.stream.flush()


def row_writer(fmt: str, stream: IO[str], segment: bool) -> JsonlWriter | CsvWriter:
    if fmt == "csv":
        return CsvWriter(stream, SEGMENT_COLUMNS if segment else DETECT_COLUMNS)
    if fmt == "jsonl":
        return JsonlWriter(stream)
    raise ValueError(f"unknown row format {fmt!r}: expected one of {', '.join(FORMATS)}")
