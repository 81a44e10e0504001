"""Input scanning and output planning: every skipped file has a reason, every input a distinct output."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from fade_cli.data.inputs import read_path_list, scan_inputs, shown
from fade_cli.data.outputs import RunLock, check_file_destination, check_folder, existing_outputs, plan_stems
from fade_cli.errors import UsageError

SUFFIXES = (".map.npy", ".overlay.png", ".mask.png")


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_path_lists_from_any_tool():
    assert read_path_list(io.StringIO("a.png\r\n\r\n   \nb c.png\n\t\n")) == ["a.png", "b c.png"]
    assert read_path_list(io.BytesIO("\ufeffa.png\r\nb.png".encode())) == ["a.png", "b.png"]
    assert read_path_list(io.BytesIO(b"line\nbreak.png\0x.png\0")) == ["line\nbreak.png", "x.png"]
    assert read_path_list(io.BytesIO(b"caf\xe9.png\n")) == [os.fsdecode(b"caf\xe9.png")]  # not UTF-8: kept as bytes


def test_stdin_names_with_stray_spaces_resolve(tmp_path):
    good = touch(tmp_path / "a.png")
    spaced = touch(tmp_path / " b.png")
    items = scan_inputs(["-"], stdin=io.StringIO(f"{good}  \r\n{spaced}\n")).items
    assert [(i.path, i.error) for i in items] == [(good, None), (spaced, None)]


def test_folder_skips_are_all_reported(tmp_path):
    d = tmp_path / "d"
    touch(d / "a.png"); touch(d / "sub" / "b.JPG"); touch(d / "anim.gif"); touch(d / "notes.txt")
    touch(d / ".hidden.png"); (d / "dangling.png").symlink_to(d / "gone.png")
    (d / "linked").symlink_to(tmp_path, target_is_directory=True)
    os.mkfifo(d / "pipe.png")
    (d / "loop1.png").symlink_to(d / "loop2.png"); (d / "loop2.png").symlink_to(d / "loop1.png")
    res = scan_inputs([str(d)])
    assert [i.path.relative_to(d).as_posix() for i in res.items] == ["a.png", "sub/b.JPG"]
    reasons = {s.path.name: s.reason for s in res.skipped}
    assert reasons == {"anim.gif": "extension not read (.gif)", "notes.txt": "extension not read (.txt)",
                       ".hidden.png": "hidden name", "dangling.png": "dangling symlink",
                       "linked": "symlink to a folder (not followed)",
                       "pipe.png": "not a regular file (FIFO, socket or device)",
                       "loop1.png": "cannot access (too many levels of symbolic links)",
                       "loop2.png": "cannot access (too many levels of symbolic links)"}
    assert res.summary() == ("8 file(s) in input folders or globs not read (2 cannot access, 2 extension not read, "
                             "1 dangling symlink, 1 hidden name, 1 not a regular file, 1 symlink to a folder)")


def test_glob_reports_what_it_cannot_read(tmp_path):
    touch(tmp_path / "a.png"); (tmp_path / "b.png").symlink_to(tmp_path / "nothing"); (tmp_path / "c.png").mkdir()
    res = scan_inputs([str(tmp_path / "*.png")])
    assert [i.path.name for i in res.items] == ["a.png"]
    assert {s.path.name: s.reason for s in res.skipped} == {"b.png": "dangling symlink", "c.png": "folder"}


def test_out_inside_an_input_folder_is_not_read_back(tmp_path):
    touch(tmp_path / "a.png"); touch(tmp_path / "out" / "a.overlay.png")
    res = scan_inputs([str(tmp_path)], exclude=[tmp_path / "out"])
    assert [i.path.name for i in res.items] == ["a.png"]
    assert [s.reason for s in res.skipped] == ["inside --out (fade's own outputs)"]


def test_same_file_under_two_spellings_is_read_once(tmp_path):
    a = touch(tmp_path / "x" / "a.png")
    items = scan_inputs([str(a), str(tmp_path / "x" / ".." / "x" / "a.png")]).items
    assert len(items) == 1


def test_shown_keeps_one_line():
    assert shown("a\nb.png") == "a\\nb.png" and shown("é ü.png") == "é ü.png"
    assert "\n" not in shown(os.fsdecode(b"caf\xe9\n.png"))


def test_stems_distinct_and_deterministic(tmp_path):
    base, out = tmp_path, tmp_path / "out"
    paths = [tmp_path / "part.png", tmp_path / "part.jpg", tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "solo.png"]
    stems, errors = plan_stems(paths, base, out, SUFFIXES)
    assert {p.name if p.parent == tmp_path else p.relative_to(tmp_path).as_posix(): s.as_posix() for p, s in stems.items()} == {
        "part.png": "part.png", "part.jpg": "part.jpg", "a/x.png": "a/x", "b/x.png": "b/x", "solo.png": "solo"}
    assert errors == {}
    assert plan_stems(list(reversed(paths)), base, out, SUFFIXES)[0] == stems


@pytest.mark.parametrize("names", [("Part.png", "part.png"), ("Part.png", "part.PNG"),
                                   ("caf\u00e9.png", "cafe\u0301.png")])
def test_names_equal_up_to_case_or_normalization_are_refused(tmp_path, names):
    with pytest.raises(UsageError, match="differ only in case or Unicode normalization"):
        plan_stems([tmp_path / n for n in names], tmp_path, tmp_path / "out", SUFFIXES)


def test_output_over_an_input_or_a_needed_folder_is_refused(tmp_path):
    with pytest.raises(UsageError, match="would overwrite the input"):
        plan_stems([tmp_path / "p.png", tmp_path / "p.mask.png"], tmp_path, tmp_path, SUFFIXES)
    with pytest.raises(UsageError, match="take the name of the folder"):
        plan_stems([tmp_path / "x.png", tmp_path / "x.map.npy" / "y.png"], tmp_path, tmp_path / "out", SUFFIXES)


def test_too_long_output_names_fail_that_input_only(tmp_path):
    long = tmp_path / ("n" * 245 + ".png")
    stems, errors = plan_stems([long, tmp_path / "ok.png"], tmp_path, tmp_path / "out", SUFFIXES)
    assert list(errors) == [long] and "longer than 255 bytes" in errors[long]


def test_existing_outputs_are_found(tmp_path):
    stems, _ = plan_stems([tmp_path / "a.png", tmp_path / "b.png"], tmp_path, tmp_path / "out", SUFFIXES)
    touch(tmp_path / "out" / "b.mask.png")
    assert existing_outputs(stems, tmp_path / "out", SUFFIXES) == [tmp_path / "out" / "b.mask.png"]


def test_destinations_checked(tmp_path, monkeypatch):
    f = touch(tmp_path / "file")
    with pytest.raises(UsageError, match="exists and is not a folder"):
        check_folder(f, "--out")
    with pytest.raises(UsageError, match="is not a folder"):
        check_folder(f / "sub" / "deeper", "--out")
    with pytest.raises(UsageError, match="is a folder, not a file"):
        check_file_destination(tmp_path, "--output")
    check_folder(tmp_path / "new" / "deep", "--out")  # creatable: fine, and nothing is created
    assert not (tmp_path / "new").exists()
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # root writes anywhere: simulate a read-only folder
    with pytest.raises(UsageError, match="not writable"):
        check_folder(tmp_path, "--out")


def test_run_lock_refuses_a_second_holder(tmp_path):
    with RunLock(tmp_path / ".fade.lock", "--out", tmp_path):
        with pytest.raises(UsageError, match=f"another fade run \\(pid {os.getpid()}\\)"):
            RunLock(tmp_path / ".fade.lock", "--out", tmp_path).__enter__()
    with RunLock(tmp_path / ".fade.lock", "--out", tmp_path):  # released on exit
        pass


def test_a_folder_that_cannot_be_listed_fails_as_an_input(tmp_path, monkeypatch):
    touch(tmp_path / "ok" / "a.png"); touch(tmp_path / "locked" / "b.png")
    real_scandir = os.scandir

    def scandir(path):  # root lists any folder: the denial is simulated
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    items = scan_inputs([str(tmp_path)]).items
    assert [(i.path.relative_to(tmp_path).as_posix(), i.error) for i in items] == [
        ("locked", "cannot list this folder (permission denied)"), ("ok/a.png", None)]


def test_run_lock_leaves_no_folder_it_created_for_nothing(tmp_path):
    with RunLock(tmp_path / "a" / "b" / ".fade.lock", "--out", tmp_path / "a" / "b"):
        assert (tmp_path / "a" / "b" / ".fade.lock").exists()
    assert not (tmp_path / "a").exists()  # refused or nothing written: no trace
    with RunLock(tmp_path / "c" / ".fade.lock", "--out", tmp_path / "c"):
        (tmp_path / "c" / "x.map.npy").write_bytes(b"x")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [".fade.lock", "x.map.npy"]
