"""Where a run writes, checked before any work: distinct output names, usable folders, one run at a time.

- `plan_stems`: every input gets its own output stem under --out, deterministically, or the run is
  refused up front. Stems mirror the input tree (same names in other folders stay apart); inputs
  that would share a stem (`part.png` and `part.jpg`) keep their extension (`part.png.map.npy`,
  `part.jpg.map.npy`); names still equal once case and Unicode normalization are ignored (as
  on macOS, Windows and FAT/exFAT volumes) are refused, as is an output that would replace an
  input or a folder another output needs.
- `check_folder` / `check_file_destination`: an --out that exists as a file, lies under a file or
  cannot be written is refused before the model loads.
- `existing_outputs`: what a run would overwrite (refused without --overwrite or --resume).
- `prepare_writes`: all of the above for one `detect`/`segment` run.
- `RunLock`: an advisory lock (flock) on a destination, so a second run on the same --out is
  refused instead of interleaving files and manifest lines; the OS drops it when the process ends.
"""

from __future__ import annotations

import contextlib
import os
import unicodedata
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..errors import UsageError
from .inputs import normalized, shown

NAME_MAX = 255  # bytes per file name on ext4, XFS, APFS, NTFS
LOCK_NAME = ".fade.lock"


def folded(path: Path | str) -> str:
    """A name as case-insensitive, normalization-insensitive file systems compare it."""
    return unicodedata.normalize("NFC", str(path)).casefold()


def relative_input(path: Path, base: Path) -> Path:
    """`path` relative to `base` (both normalized), or its whole absolute path without the root."""
    path, base = normalized(path), normalized(base)
    try:
        return path.relative_to(base)
    except ValueError:
        return Path(*path.parts[1:])


def common_base(paths: Iterable[Path]) -> Path:
    """The deepest folder holding all `paths` (the current folder if there are none)."""
    parents = [str(normalized(p).parent) for p in paths]
    return Path(os.path.commonpath(parents)) if parents else Path.cwd()


def _relative(path: str, base: str) -> str:
    """Normalized absolute `path` under normalized `base`, as a string (pathlib costs ~10x here)."""
    if base == os.sep:
        return path.lstrip(os.sep)
    return path[len(base) + 1:] if path.startswith(base + os.sep) else os.path.splitdrive(path)[1].lstrip(os.sep)


def plan_stems(paths: Sequence[Path], base: Path, out: Path, suffixes: Sequence[str]) -> tuple[dict[Path, Path], dict[Path, str]]:
    """(input -> output stem relative to `out`, input -> why it cannot be written).

    Raises UsageError, naming two inputs, when no distinct deterministic names exist. Strings,
    not Paths, inside: 100k inputs are planned in about a second."""
    sep, base_s = os.sep, os.path.abspath(base)
    absolute = {p: os.path.abspath(p) for p in paths}
    rel = {p: _relative(a, base_s) for p, a in absolute.items()}
    stems = {}
    for p, r in rel.items():
        root, ext = os.path.splitext(r)
        stems[p] = root if ext else r
    groups: dict[str, list[Path]] = defaultdict(list)
    for p, st in stems.items():
        groups[folded(st)].append(p)
    for members in groups.values():
        if len(members) > 1:  # part.png + part.jpg: keep the extension in the stem
            for p in members:
                stems[p] = rel[p]
    owner: dict[str, Path] = {}
    for p, st in stems.items():
        key = folded(st)
        if key in owner:
            raise UsageError(
                f"{shown(owner[key])} and {shown(p)} would write the same outputs under {shown(out)} (their names differ "
                f"only in case or Unicode normalization); rename one or score them in separate runs"
            )
        owner[key] = p
    files = {folded(st + suf): p for p, st in stems.items() for suf in suffixes}
    for p, st in stems.items():
        parts = st.split(sep)
        for i in range(1, len(parts)):
            folder = folded(sep.join(parts[:i]))
            if folder in files:
                raise UsageError(f"outputs of {shown(files[folder])} would take the name of the folder "
                                 f"{shown(out / sep.join(parts[:i]))} that the outputs of {shown(p)} need; rename one")
    # Folders through symlinks (--out may name an input folder another way); the file name itself
    # as it is: a rename replaces the directory entry, not what a symlink points to.
    real_folders: dict[str, str] = {}

    def entry(path: str) -> str:
        folder, name = os.path.split(path)
        if folder not in real_folders:
            real_folders[folder] = os.path.realpath(folder)
        return folded(os.path.join(real_folders[folder], name))

    out_real = os.path.realpath(out)
    inputs = {entry(a): p for p, a in absolute.items()}
    for p, st in stems.items():
        for suf in suffixes:
            target = entry(os.path.join(out_real, st + suf))
            if target in inputs:
                raise UsageError(f"--out {shown(out)}: the outputs of {shown(p)} would overwrite the input "
                                 f"{shown(inputs[target])}; choose another --out")
    longest = max(suffixes, key=len)
    errors = {}
    for p, st in stems.items():
        name = os.path.basename(st) + longest
        if len(os.fsencode(name)) > NAME_MAX:
            errors[p] = f"output name {shown(name)} is longer than {NAME_MAX} bytes; rename the input"
    return {p: Path(st) for p, st in stems.items()}, errors


def existing_outputs(stems: Mapping[Path, Path], out: Path, suffixes: Sequence[str]) -> list[Path]:
    """The planned output files that exist already (a run would replace them)."""
    names = (os.path.join(out, f"{st}{suf}") for st in stems.values() for suf in suffixes)
    return [Path(f) for f in names if os.path.lexists(f)]


def _first_existing(path: Path) -> Path:
    here = path
    while not os.path.lexists(here) and here != here.parent:
        here = here.parent
    return here


def check_folder(path: Path, flag: str) -> None:
    """Refuse, before any work, a folder that is a file, lies under a file or cannot be written."""
    p = normalized(path)
    if os.path.lexists(p):
        if not p.exists():
            raise UsageError(f"{flag} {shown(path)}: is a dangling symlink")
        if not p.is_dir():
            raise UsageError(f"{flag} {shown(path)}: exists and is not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UsageError(f"{flag} {shown(path)}: the folder is not writable")
        return
    _check_creatable(p, path, flag)


def check_file_destination(path: Path, flag: str) -> None:
    """Refuse, before any work, a file destination that is a folder or whose folder cannot be written."""
    p = normalized(path)
    if p.is_dir():
        raise UsageError(f"{flag} {shown(path)}: is a folder, not a file")
    if os.path.lexists(p):
        if not os.access(p.parent, os.W_OK | os.X_OK):
            raise UsageError(f"{flag} {shown(path)}: its folder is not writable")
        return
    _check_creatable(p, path, flag)


def _check_creatable(p: Path, shown_as: Path, flag: str) -> None:
    anchor = _first_existing(p.parent)
    if not anchor.exists():
        raise UsageError(f"{flag} {shown(shown_as)}: {shown(anchor)} is a dangling symlink")
    if not anchor.is_dir():
        raise UsageError(f"{flag} {shown(shown_as)}: {shown(anchor)} is not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {shown(shown_as)}: cannot create it, {shown(anchor)} is not writable")


class RunLock:
    """Exclusive advisory lock on a destination for the life of a run (no-op where flock is missing)."""

    def __init__(self, lock_file: Path, flag: str, destination: Path):
        self.lock_file, self.flag, self.destination = lock_file, flag, destination
        self._fd: int | None = None
        self._created: list[Path] = []

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # Windows: no flock; concurrent runs are not detected there
            return self
        folder = self.lock_file.parent
        self._created = [f for f in [folder, *folder.parents] if not os.path.lexists(f)]
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise UsageError(f"{self.flag} {shown(self.destination)}: another fade run"
                             f"{f' (pid {holder})' if holder else ''} is writing there; wait for it or use another {self.flag}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        os.close(self._fd)  # closing releases the lock; the file stays (unlinking it would race)...
        self._fd = None
        # ...except in folders this run created and left empty (refused, or no image written):
        # a run that writes nothing leaves nothing behind
        if self._created and os.listdir(self.lock_file.parent) == [self.lock_file.name]:
            with contextlib.suppress(OSError):
                self.lock_file.unlink()
                for folder in self._created:
                    folder.rmdir()


def prepare_writes(held: contextlib.ExitStack, todo: Sequence[Path], out: Path | None, manifest: Path | None,
                   suffixes: Sequence[str], overwrite: bool, resume: bool) -> tuple[dict[Path, Path] | None, dict[Path, str]]:
    """Everything about a scoring run's destinations, before the model loads: check --out and
    --manifest, give every input distinct output names (or refuse), lock the destinations for the
    life of `held`, and refuse to replace existing outputs without --overwrite or --resume.

    Returns (input -> output stem under `out`, None without `out`; input -> why it cannot be written)."""
    if out is not None:
        check_folder(out, "--out")
    if manifest is not None:
        check_file_destination(manifest, "--manifest")
    stems, errors = None, {}
    if out is not None:
        stems, errors = plan_stems(todo, common_base(todo), out, suffixes)
        held.enter_context(RunLock(out / LOCK_NAME, "--out", out))
    if manifest is not None and (out is None or normalized(out) not in normalized(manifest).parents):
        held.enter_context(RunLock(manifest.with_name(f".{manifest.name}.lock"), "--manifest", manifest))
    if stems and not (overwrite or resume):
        existing = existing_outputs(stems, out, suffixes)
        if existing:
            raise UsageError(f"--out {shown(out)}: {len(existing)} output file(s) exist already, e.g. {shown(existing[0])}; "
                             f"pass --overwrite to replace them, or --resume to keep the finished ones")
    return stems, errors
