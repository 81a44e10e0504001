#!/usr/bin/env bash
# Run HERE, before the one device call of a session that has a lent GPU (docs/gpu.md).
#
# The device machine has Python 3.12 with torch, torchvision, pillow, numpy, scipy, einops,
# typer and rich, but no open_clip and no network. This puts wheels of fade-cli itself and of
# what it needs beyond that image into .whl/ (git-ignored via .git/info/exclude), for
# `run(carry=[".whl"], ...)`; bench/gpu/check.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
PY=${PYTHON:-python3}
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl .
# pure-Python wheels: the versions installed here, which the tests ran with
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    "open_clip_torch==$(ver open_clip_torch)" "ftfy==$(ver ftfy)" "wcwidth==$(ver wcwidth)"
ls -l .whl
du -sh .whl
