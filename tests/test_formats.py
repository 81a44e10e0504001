"""Row formats: CSV parses with the csv module, has the same columns every row, and matches JSONL."""

from __future__ import annotations

import csv
import io
import json

from fade_cli.decisions.formats import DETECT_COLUMNS, SEGMENT_COLUMNS, CsvWriter, JsonlWriter, row_writer

ROWS = [
    {"path": "a, b.png", "class": "bottle", "score": 0.7123, "anomalous": True, "threshold": 0.61,
     "threshold_source": "bank:b.fadebank", "false_alarm_rate": 0.01, "ms": 12.5, "method": "fade", "shots": 4,
     "banks": ["winclip", "fade-llm"], "pixel_threshold": 0.4, "pixel_threshold_source": "fixed", "map_max": 0.9,
     "anomalous_fraction": 0.02, "outputs": {"map": "o/a.map.npy", "overlay": "o/a.overlay.png", "mask": "o/a.mask.png"},
     "regions": [{"bbox": [1, 2, 5, 6], "area": 9, "peak": 0.9, "mean": 0.6},
                 {"bbox": [10, 2, 30, 12], "area": 120, "peak": 0.8, "mean": 0.5}]},
    {"path": "c.png", "class": "bottle", "score": 0.1, "anomalous": False, "threshold": 0.61, "ms": 11.0,
     "method": "fade", "shots": 4, "banks": ["winclip"], "regions": [], "outputs": {"map": "m", "overlay": "o", "mask": "k"}},
]


def test_csv_parses_and_matches_jsonl():
    text, lines = io.StringIO(), io.StringIO()
    table, jsonl = CsvWriter(text, SEGMENT_COLUMNS), JsonlWriter(lines)
    for row in ROWS:
        table.write(row)
        jsonl.write(row)
    parsed = list(csv.reader(io.StringIO(text.getvalue())))
    assert parsed[0] == list(SEGMENT_COLUMNS)
    assert all(len(r) == len(SEGMENT_COLUMNS) for r in parsed)
    records = list(csv.DictReader(io.StringIO(text.getvalue())))
    for rec, line in zip(records, lines.getvalue().splitlines(), strict=True):
        row = json.loads(line)
        assert rec["path"] == row["path"] and float(rec["score"]) == row["score"]
        assert rec["anomalous"] == json.dumps(row["anomalous"])
        assert rec["banks"].split(";") == row["banks"]
        assert {k: rec[k] for k in ("map", "overlay", "mask")} == row["outputs"]
        assert int(rec["regions"]) == len(row["regions"])
        if row["regions"]:
            big = max(row["regions"], key=lambda r: r["area"])
            assert [int(rec[f"largest_{c}"]) for c in ("x0", "y0", "x1", "y1")] == big["bbox"]
            assert int(rec["largest_area"]) == big["area"]
        else:
            assert rec["largest_x0"] == "" and rec["largest_area"] == ""
        assert rec["false_alarm_rate"] == ("" if "false_alarm_rate" not in row else str(row["false_alarm_rate"]))


def test_detect_columns_and_header_even_without_rows():
    text = io.StringIO()
    writer = row_writer("csv", text, segment=False)
    assert text.getvalue().strip() == ",".join(DETECT_COLUMNS)
    writer.write({**ROWS[1], "extra": 1})
    assert len(list(csv.reader(io.StringIO(text.getvalue())))[1]) == len(DETECT_COLUMNS)
