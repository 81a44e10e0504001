"""The corpus of odd but ordinary inputs, each asserted through the `fade` command (issue 19).

Every case ends in a correct result or one clear stderr line with the documented exit status
(docs/limits.md, "What is read"); nothing is overwritten without --overwrite (or --resume).
Files are generated here; nothing binary is committed.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import helpers
from conftest import TINY_CONFIG, random_image
from helpers import FAST, make_corpus, rows

NO_MODEL = ["--model", "no-such-model", *FAST[2:]]  # loading it fails: an error about anything else came first


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("text-cache")  # one text-embedding cache for the module's runs


@pytest.fixture(autouse=True)
def _shared_cache(monkeypatch, text_cache):
    monkeypatch.setenv("FADE_CACHE_DIR", str(text_cache))


def run(capsys, monkeypatch, *args, stdin: bytes | None = None):
    """helpers.run, with `stdin` bytes as the standard input."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    return helpers.run(capsys, monkeypatch, *args)


def one_error_line(stderr: str) -> str:
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("fade: ") and "Traceback" not in stderr, stderr
    return lines[0]


def refused(capsys, monkeypatch, *args, message: str, stdin: bytes | None = None) -> None:
    """Exit 2 with one line holding `message`, decided before the model loads, nothing on stdout."""
    model = NO_MODEL[:6] if args[0] in ("bank", "eval") else NO_MODEL
    code, stdout, stderr = run(capsys, monkeypatch, *args, *model, stdin=stdin)
    line = one_error_line(stderr)
    assert code == 2 and stdout == "" and message in line, stderr
    assert "no-such-model" not in line


# ---- output collisions --------------------------------------------------------------------

def test_part_png_and_part_jpg_get_distinct_deterministic_outputs(capsys, monkeypatch, tmp_path):
    random_image(1).save(tmp_path / "part.png")
    random_image(2).save(tmp_path / "part.jpg")
    random_image(3).save(tmp_path / "other.png")
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "part.png"), str(tmp_path / "part.jpg"), str(tmp_path / "other.png"), "--out", str(out), "-q", *FAST]
    code, stdout, stderr = run(capsys, monkeypatch, *args)
    assert code == 0, stderr
    maps = {Path(r["path"]).name: Path(r["outputs"]["map"]).name for r in rows(stdout)}
    assert maps == {"part.png": "part.png.map.npy", "part.jpg": "part.jpg.map.npy", "other.png": "other.map.npy"}
    from PIL import Image

    first, second = (np.asarray(Image.open(out / maps[n].replace(".map.npy", ".overlay.png"))) for n in ("part.png", "part.jpg"))
    assert not np.array_equal(first, second)  # the two images' overlays, neither overwritten
    code, again, _ = run(capsys, monkeypatch, *args, "--overwrite")
    assert code == 0 and [r["outputs"] for r in rows(again)] == [r["outputs"] for r in rows(stdout)]


def test_same_stem_in_other_folders_and_from_stdin(capsys, monkeypatch, tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        random_image(ord(d)).save(tmp_path / d / "part.png")
    listing = f"{tmp_path / 'a' / 'part.png'}\n{tmp_path / 'b' / 'part.png'}\n".encode()
    code, stdout, stderr = run(capsys, monkeypatch, "segment", "-", "--out", str(tmp_path / "out"), "-q", *FAST, stdin=listing)
    assert code == 0, stderr
    assert sorted(Path(r["outputs"]["map"]).relative_to(tmp_path / "out").as_posix() for r in rows(stdout)) == [
        "a/part.map.npy", "b/part.map.npy"]


@pytest.mark.parametrize("names", [("Part.png", "part.png"), ("caf\u00e9.png", "cafe\u0301.png")],
                         ids=["case-only", "unicode-normalization"])
def test_names_one_file_on_case_insensitive_volumes_are_refused_up_front(capsys, monkeypatch, tmp_path, names):
    for i, n in enumerate(names):
        random_image(i).save(tmp_path / n, format="PNG")
    out = tmp_path / "out"
    refused(capsys, monkeypatch, "segment", str(tmp_path / names[0]), str(tmp_path / names[1]), "--out", str(out),
            message="differ only in case or Unicode normalization")
    assert not out.exists()


def test_an_output_that_would_replace_an_input_is_refused(capsys, monkeypatch, tmp_path):
    random_image(0).save(tmp_path / "p.png")
    random_image(1).save(tmp_path / "p.mask.png")  # p.png's mask would be written over it
    refused(capsys, monkeypatch, "segment", str(tmp_path), "--out", str(tmp_path), message="would overwrite the input")
    assert (tmp_path / "p.mask.png").stat().st_size > 0


def test_existing_outputs_need_overwrite(capsys, monkeypatch, image_dir, tmp_path):
    out = tmp_path / "out"
    args = ["segment", str(image_dir), "--out", str(out), "-q", *FAST]
    code, _, stderr = run(capsys, monkeypatch, *args)
    assert code == 0, stderr
    stamp = (out / "img0.map.npy").stat().st_mtime_ns
    refused(capsys, monkeypatch, "segment", str(image_dir), "--out", str(out), message="exist already")
    assert (out / "img0.map.npy").stat().st_mtime_ns == stamp
    code, _, stderr = run(capsys, monkeypatch, *args, "--overwrite")
    assert code == 0, stderr
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 3  # --overwrite starts the manifest afresh


def test_out_inside_an_input_folder_is_not_read_back(capsys, monkeypatch, image_dir):
    out = image_dir / "results"
    code, stdout, stderr = run(capsys, monkeypatch, "segment", str(image_dir), "--out", str(out), *FAST)
    assert code == 0 and len(rows(stdout)) == 3, stderr
    code, stdout, stderr = run(capsys, monkeypatch, "detect", str(image_dir), "-v", *FAST)
    assert code == 0 and len(rows(stdout)) == 9  # detect has no --out: the earlier outputs are images too
    code, stdout, stderr = run(capsys, monkeypatch, "segment", str(image_dir), "--out", str(out), "--overwrite", *FAST)
    assert code == 0 and len(rows(stdout)) == 3 and "inside --out" in stderr, stderr


# ---- reference banks ----------------------------------------------------------------------

def _checkpoint_with_one_deep_change(path: Path) -> Path:
    """The tiny random weights with one value changed deep in the vision tower: same model name."""
    import open_clip

    from fade_cli.model.backbone import load_backbone

    open_clip.add_model_config(TINY_CONFIG)
    state = {k: v.clone() for k, v in load_backbone("fade-tiny", "none", "cpu").model.state_dict().items()}
    state["visual.transformer.resblocks.3.mlp.c_fc.bias"][0] += 0.5
    torch.save(state, path)
    return path


def test_bank_from_other_weights_of_the_same_model_is_refused(capsys, monkeypatch, image_dir, tmp_path):
    bank = tmp_path / "good.fadebank"
    code, _, stderr = run(capsys, monkeypatch, "bank", "build", str(image_dir), "-o", str(bank), "--scales", "32,64", *FAST[:6])
    assert code == 0, stderr
    assert len(json.loads(run(capsys, monkeypatch, "bank", "info", str(bank))[1])["weights_fingerprint"]) == 64
    other = [a if a != "none" else str(_checkpoint_with_one_deep_change(tmp_path / "other.pt")) for a in FAST]
    code, stdout, stderr = run(capsys, monkeypatch, "detect", str(image_dir), "--bank", str(bank), "-q", *other)
    assert code == 2 and stdout == "" and "other weights" in one_error_line(stderr)
    code, stdout, stderr = run(capsys, monkeypatch, "detect", str(image_dir), "--bank", str(bank), "-q", *FAST)
    assert code == 0 and len(rows(stdout)) == 3, stderr


def test_bank_without_a_fingerprint_is_used_with_a_note(capsys, monkeypatch, image_dir, tmp_path):
    """Banks written before fingerprints: accepted when the older, partial weights id matches, with
    one line saying to rebuild; refused when even that differs."""
    bank = tmp_path / "old.fadebank"
    code, _, stderr = run(capsys, monkeypatch, "bank", "build", str(image_dir), "-o", str(bank), "--scales", "32,64", *FAST[:6])
    assert code == 0, stderr
    with np.load(bank, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays["meta_json"]))
    del meta["weights_fingerprint"]
    arrays["meta_json"] = np.array(json.dumps(meta))
    with open(bank, "wb") as fh:
        np.savez(fh, **arrays)
    code, stdout, stderr = run(capsys, monkeypatch, "detect", str(image_dir), "--bank", str(bank), "-q", *FAST)
    assert code == 0 and len(rows(stdout)) == 3
    assert "no weights fingerprint" in one_error_line(stderr) and "fade bank build" in stderr


# ---- path lists on stdin ------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["crlf", "blank-and-space-lines", "bom", "nul"])
def test_path_lists_on_stdin(capsys, monkeypatch, image_dir, layout):
    a, b = (str(image_dir / f"img{i}.png") for i in (0, 1))
    data = {"crlf": f"{a}\r\n{b}\r\n", "blank-and-space-lines": f"\n{a}\n   \n\t\n{b}\n\n",
            "bom": f"\ufeff{a}\r\n{b}", "nul": f"{a}\0{b}\0"}[layout].encode()
    code, stdout, stderr = run(capsys, monkeypatch, "detect", "-", "-q", *FAST, stdin=data)
    assert code == 0 and stderr == "" and [r["path"] for r in rows(stdout)] == [a, b]


# ---- files in folders that are not read ---------------------------------------------------

def test_skipped_files_are_counted_and_listed_with_verbose(capsys, monkeypatch, image_dir):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image_dir / "anim.gif")
    (image_dir / "notes.txt").write_text("x")
    (image_dir / "gone.png").symlink_to(image_dir / "nothing.png")
    os.mkfifo(image_dir / "pipe.png")
    code, stdout, stderr = run(capsys, monkeypatch, "detect", str(image_dir), "-q", *FAST)
    assert code == 0 and len(rows(stdout)) == 3
    assert one_error_line(stderr) == ("fade: 4 file(s) in input folders or globs not read (2 extension not read, 1 dangling symlink, "
                                      "1 not a regular file); -v lists them")
    code, stdout, stderr = run(capsys, monkeypatch, "detect", str(image_dir), "-q", "-v", *FAST)
    listed = sorted(l for l in stderr.splitlines() if l.startswith("fade: skipped "))
    assert code == 0 and [l.split(": ")[1].split(" ")[1] for l in listed] == sorted(
        str(image_dir / n) for n in ("anim.gif", "notes.txt", "gone.png", "pipe.png"))
    assert any(l.endswith("pipe.png: not a regular file (FIFO, socket or device)") for l in listed)


def test_special_file_named_explicitly_fails_that_file(capsys, monkeypatch, image_dir):
    os.mkfifo(image_dir / "pipe.png")  # reading it would block forever
    code, stdout, stderr = run(capsys, monkeypatch, "detect", str(image_dir / "pipe.png"), str(image_dir / "img0.png"), "-q", *FAST)
    assert code == 1 and len(rows(stdout)) == 1
    assert one_error_line(stderr) == f"fade: {image_dir / 'pipe.png'}: not a regular file (FIFO, socket or device)"


def test_the_image_corpus_through_the_command(capsys, monkeypatch, tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    corpus = make_corpus(d)
    try:
        code, stdout, stderr = run(capsys, monkeypatch, "detect", str(d), "--max-pixels", "1000000", "-q", *FAST)
    finally:
        os.chmod(d / "locked.png", 0o644)
    bad = {f for f, why in corpus.values() if why is not None and not (f == "locked.png" and os.geteuid() == 0)}
    good = {f for f, why in corpus.values() if why is None} | ({"locked.png"} if os.geteuid() == 0 else set())
    assert code == 1 and {Path(r["path"]).name for r in rows(stdout)} == good
    lines = [l for l in stderr.splitlines() if l.strip() and "ok," not in l]
    assert sorted(Path(l.split(": ")[1]).name for l in lines) == sorted(bad) and "Traceback" not in stderr
    for f, why in corpus.values():
        if f in bad:
            assert any(l.startswith(f"fade: {d / f}: ") and why in l for l in lines), (f, why, stderr)


# ---- destinations checked before the model loads ------------------------------------------

def test_out_that_cannot_be_a_folder_is_refused_before_the_model_loads(capsys, monkeypatch, image_dir, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    img = str(image_dir / "img0.png")
    refused(capsys, monkeypatch, "segment", img, "--out", str(f), message="exists and is not a folder")
    refused(capsys, monkeypatch, "segment", img, "--out", str(f / "sub"), message=f"{f} is not a folder")
    (tmp_path / "new\nline").write_text("x")  # the name is escaped: the refusal stays one line
    refused(capsys, monkeypatch, "segment", img, "--out", str(tmp_path / "new\nline"), message="new\\nline: exists and is not a folder")
    refused(capsys, monkeypatch, "detect", img, "--manifest", str(tmp_path), message="is a folder, not a file")
    refused(capsys, monkeypatch, "bank", "build", str(image_dir), "-o", str(tmp_path), message="is a folder, not a file")
    refused(capsys, monkeypatch, "bank", "build", str(image_dir), "-o", str(f), message="exists already")
    refused(capsys, monkeypatch, "eval", str(tmp_path), "--out", str(f), message="exists and is not a folder")
    (tmp_path / "ro").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode & os.W_OK and str(p).startswith(str(tmp_path / "ro"))
                        else real_access(p, mode, **kw))  # root writes anywhere: simulate a read-only folder
    refused(capsys, monkeypatch, "segment", img, "--out", str(tmp_path / "ro"), message="not writable")
    refused(capsys, monkeypatch, "segment", img, "--out", str(tmp_path / "ro" / "new"), message="not writable")


def test_a_second_run_on_the_same_out_is_refused(capsys, monkeypatch, image_dir, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; os.makedirs(sys.argv[1], exist_ok=True); "
         "fd = os.open(os.path.join(sys.argv[1], '.fade.lock'), os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
         "os.write(fd, b'4242'); print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused(capsys, monkeypatch, "segment", str(image_dir), "--out", str(out), message="another fade run (pid 4242)")
    finally:
        holder.kill()
        holder.wait()
    code, stdout, stderr = run(capsys, monkeypatch, "segment", str(image_dir), "--out", str(out), "-q", *FAST)
    assert code == 0 and len(rows(stdout)) == 3, stderr  # the lock dies with its process


# ---- option values ------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--threshold", "nan"], "--threshold nan"),
    (["--threshold", "inf"], "--threshold inf"),
    (["--threshold", "-inf"], "--threshold -inf"),
    (["--threshold", "1.5"], "between 0 and 1"),
    (["--pixel-threshold", "-3"], "--pixel-threshold -3"),
    (["--pixel-threshold", "nan"], "--pixel-threshold nan"),
    (["--vision-weight", "nan"], "--vision-weight"),
    (["--vision-multiplier", "inf"], "--vision-multiplier"),
    (["--vision-multiplier", "-1"], "--vision-multiplier"),
    (["--smooth", "nan"], "--smooth"),
    (["--object-prior", "nan"], "--object-prior"),
])
def test_non_finite_or_out_of_range_numbers_are_refused(capsys, monkeypatch, image_dir, tmp_path, args, message):
    refused(capsys, monkeypatch, "segment", str(image_dir / "img0.png"), "--out", str(tmp_path / "out"), *args, message=message)
    assert not (tmp_path / "out").exists()


# ---- names, sizes -------------------------------------------------------------------------

def test_names_with_spaces_unicode_newlines_and_undecodable_bytes(capsys, monkeypatch, tmp_path):
    d = tmp_path / "in put"
    d.mkdir()
    names = ["a b.png", "\u00fc \u00f1 \u6f22.png", "new\nline.png", os.fsdecode(b"caf\xe9.png")]
    for i, n in enumerate(names):
        random_image(i).save(os.path.join(os.fsencode(d), os.fsencode(n)), format="PNG")
    (d / "bad\nname.png").write_bytes(b"")
    out = tmp_path / "out"
    code, stdout, stderr = run(capsys, monkeypatch, "segment", str(d), "--out", str(out), "-q", *FAST)
    assert code == 1
    got = rows(stdout)
    assert sorted(Path(r["path"]).name for r in got) == sorted(names)
    for r in got:
        assert Path(r["outputs"]["mask"]).name == Path(r["path"]).name[:-4] + ".mask.png" and Path(r["outputs"]["mask"]).is_file()
    line = one_error_line(stderr.replace("fade: 4 ok, 1 failed\n", ""))
    assert line == f"fade: {d}/bad\\nname.png: empty file (0 bytes)"


def test_zero_byte_and_huge_images_fail_alone(capsys, monkeypatch, image_dir):
    from PIL import Image

    (image_dir / "zero.png").write_bytes(b"")
    Image.new("L", (1200, 1000)).save(image_dir / "huge.png")
    code, stdout, stderr = run(capsys, monkeypatch, "detect", str(image_dir), "--max-pixels", "1000000", "-q", *FAST)
    assert code == 1 and len(rows(stdout)) == 3
    lines = sorted(l for l in stderr.splitlines() if l.strip())
    assert lines == [f"fade: {image_dir / 'huge.png'}: image is too large (over 1000000 pixels; raise the limit with --max-pixels)",
                     f"fade: {image_dir / 'zero.png'}: empty file (0 bytes)"]


def test_an_output_name_too_long_for_the_file_system_fails_that_image_alone(capsys, monkeypatch, image_dir, tmp_path):
    long = image_dir / ("n" * 245 + ".png")  # fine as an input; NAME.overlay.png would pass 255 bytes
    random_image(9).save(long)
    code, stdout, stderr = run(capsys, monkeypatch, "segment", str(image_dir), "--out", str(tmp_path / "out"), "-q", *FAST)
    assert code == 1 and len(rows(stdout)) == 3
    assert one_error_line(stderr) == f"fade: {long}: output name {'n' * 245}.overlay.png is longer than 255 bytes; rename the input"


def test_checked_number_admits_auto_only_where_allowed():
    from fade_cli.cli.common import checked_number
    from fade_cli.errors import UsageError

    assert checked_number(" Auto ", "--threshold", 0, 1, allow_auto=True) == "auto"
    assert checked_number("0.25", "--threshold", 0, 1, allow_auto=True) == 0.25 and checked_number(1, "--t", 0, 1) == 1.0
    for value, allow, message in [("auto", False, "--threshold auto: expected a number"),
                                  ("nan", True, "--threshold nan: expected a finite number between 0 and 1 or auto"),
                                  (float("-inf"), False, "--threshold -inf: expected a finite number between 0 and 1"),
                                  ("-3", False, "--threshold -3: expected a finite number between 0 and 1")]:
        with pytest.raises(UsageError) as exc:
            checked_number(value, "--threshold", 0, 1, allow_auto=allow)
        assert str(exc.value) == message
