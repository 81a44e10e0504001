"""What the user named, turned into the list of files to read, with every skipped file accounted for.

`scan_inputs` expands files, globs, folders (searched recursively) and '-' (a path list on stdin).
Nothing is dropped silently: a name that matches nothing becomes an error item (the run reports
it and exits 1), and a file a folder or glob holds but that is not read (another extension, a
dangling symlink, a FIFO or device, a hidden name, a symlinked folder, fade's own --out folder) is
returned in `skipped` with its reason, for the command to count on stderr (and list with -v).

Path lists on stdin may come from any tool: UTF-8 or not (bytes are kept as the file system's
names), CRLF or LF line ends, a byte-order mark, blank lines, or NUL-separated (`find -print0`,
the only way to pass names holding a newline).
"""

from __future__ import annotations

import glob
import os
import stat
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Sequence, TextIO

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class InputItem:
    """One thing the user named: a readable path, or an error to report for it."""

    path: Path
    error: str | None = None


@dataclass(frozen=True)
class Skipped:
    """A file a folder or glob holds that is not read, and why."""

    path: Path
    reason: str


@dataclass
class Inputs:
    items: list[InputItem] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def summary(self) -> str | None:
        """'3 files not read (2 extension not read, 1 dangling symlink)', or None if none was skipped."""
        if not self.skipped:
            return None
        counts = Counter(_reason_kind(s.reason) for s in self.skipped)
        parts = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"{len(self.skipped)} file(s) in input folders or globs not read ({parts})"


def _reason_kind(reason: str) -> str:
    return reason.split(" (")[0]


def shown(path: Path | str) -> str:
    """A path as one printable line: control characters (a newline in a name) and undecodable
    bytes are written as escapes, so each error stays one line on stderr."""
    text = str(path)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def normalized(path: Path) -> Path:
    """Absolute and with '..' and '.' collapsed (symlinks are kept as named)."""
    return Path(os.path.abspath(path))


def read_path_list(stream: TextIO | BinaryIO) -> list[str]:
    """The paths in a list from stdin: NUL-separated if it holds a NUL, else one per line (LF or
    CRLF); a leading byte-order mark and blank or whitespace-only lines are dropped."""
    raw = getattr(stream, "buffer", stream).read()
    text = os.fsdecode(raw) if isinstance(raw, bytes) else raw
    text = text.removeprefix("\ufeff")
    if "\0" in text:
        entries = text.split("\0")
    else:
        entries = [line.removesuffix("\r") for line in text.split("\n")]
    return [e for e in entries if e.strip()]


def _classify(path: Path, by_extension: bool) -> str | None:
    """None if `path` is to be read, else why it is skipped (for entries found in a folder or glob)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "dangling symlink" if os.path.islink(path) else "vanished while listing"
    except OSError as exc:
        return f"cannot access ({(exc.strerror or type(exc).__name__).lower()})"
    if stat.S_ISDIR(mode):
        return "symlink to a folder (not followed)" if os.path.islink(path) else "folder"
    if not stat.S_ISREG(mode):
        return "not a regular file (FIFO, socket or device)"
    if by_extension and path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"extension not read ({path.suffix.lower() or 'none'})"
    return None


def _inside(path: Path, folders: Sequence[Path]) -> bool:
    return any(path == f or f in path.parents for f in folders)


def _walk(root: Path, exclude: Sequence[Path], result: Inputs) -> list[Path]:
    """Image files under `root` (recursive, symlinked folders not followed), skipping the rest."""
    found: list[Path] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as it:
                entries = [Path(e.path) for e in it]
        except OSError as exc:
            result.items.append(InputItem(folder, f"cannot list this folder ({(exc.strerror or type(exc).__name__).lower()})"))
            continue
        for p in entries:
            if p.name.startswith("."):
                result.skipped.append(Skipped(p, "hidden name"))
            elif exclude and _inside(normalized(p), exclude):
                result.skipped.append(Skipped(p, "inside --out (fade's own outputs)"))
            elif (why := _classify(p, by_extension=True)) == "folder":
                pending.append(p)
            elif why is not None:
                result.skipped.append(Skipped(p, why))
            else:
                found.append(p)
    return sorted(found)


def scan_inputs(specs: Iterable[str], stdin: TextIO | BinaryIO | None = None,
                exclude: Sequence[Path] = ()) -> Inputs:
    """Files, globs, folders (recursive, image extensions only) and '-' (paths on stdin).

    Order is deterministic: the order of `specs`, each glob or folder sorted; a file named twice
    (also as 'a/../a.png') is read once. Files under `exclude` (the run's --out) are not taken
    from folders. A file named explicitly is read whatever its extension.
    """
    result = Inputs()
    seen: set[Path] = set()
    exclude = [normalized(e) for e in exclude]

    def add(item: InputItem) -> None:
        key = normalized(item.path)
        if item.error is None and key in seen:
            return
        seen.add(key)
        result.items.append(item)

    def expand(spec: str, from_list: bool) -> None:
        path = Path(spec)
        if from_list and not os.path.lexists(spec) and os.path.lexists(spec.strip()):
            path = Path(spec.strip())  # a list with stray spaces around a name that has none
        if path.is_dir():
            # --out inside this folder holds fade's outputs: not inputs (--out == this folder is allowed)
            inner = [e for e in exclude if normalized(path) in e.parents]
            found = _walk(path, inner, result)
            if not found:
                add(InputItem(path, f"directory contains no images ({', '.join(IMAGE_EXTENSIONS)})"))
            for p in found:
                add(InputItem(p))
        elif os.path.lexists(path):
            add(InputItem(path))
        elif glob.has_magic(spec):
            found = []
            for match in sorted(Path(p) for p in glob.glob(spec, recursive=True)):
                why = _classify(match, by_extension=False)
                if why is None:
                    found.append(match)
                else:
                    result.skipped.append(Skipped(match, why))
            if not found:
                add(InputItem(path, "pattern matches no files"))
            for p in found:
                add(InputItem(p))
        else:
            add(InputItem(path, "no such file or directory"))

    for spec in specs:
        if spec == "-":
            for entry in read_path_list(stdin if stdin is not None else sys.stdin):
                expand(entry, from_list=True)
        else:
            expand(spec, from_list=False)
    return result


def expand_inputs(specs: Iterable[str], stdin: TextIO | BinaryIO | None = None) -> list[InputItem]:
    """`scan_inputs(...).items`: for callers that need no account of skipped files."""
    return scan_inputs(specs, stdin).items
