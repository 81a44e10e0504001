#!/usr/bin/env bash
# A batch inspection a quality engineer can copy: build the reference bank once, segment a
# folder (resumable), collect a CSV of scores, list the rejects and the unreadable files.
#
#   examples/batch_inspect.sh GOOD_DIR IMAGES_DIR OUT_DIR [CLASS]
# Extra fade options can be passed in FADE_OPTS, e.g. FADE_OPTS="--device cuda --batch-size 8".
# Offline? add --pretrained /path/to/vit_b_16_plus_240-laion400m_e31.pt to FADE_OPTS.
set -uo pipefail
good=${1:?good reference folder}; images=${2:?folder of images to inspect}; out=${3:?output folder}; class=${4:-object}
read -r -a opts <<< "${FADE_OPTS:-}"
mkdir -p "$out"

# 1. The reference bank: built once, reused by every later run (delete it to rebuild).
bank="$out/$class.fadebank"
if [ ! -f "$bank" ]; then
  fade bank build "$good" --class "$class" -o "$bank" "${opts[@]}" || exit 2
fi

# 2. Segment everything; --resume skips images finished by an earlier (interrupted) run.
#    Results: one JSON line per image; unreadable files: one line each on stderr.
#    -q keeps stderr to those error lines only.
fade segment "$images" --class "$class" --bank "$bank" --out "$out/maps" --resume -q "${opts[@]}" \
  > "$out/results.jsonl" 2> "$out/errors.log"
status=$?   # 0 all fine, 1 some files failed, 2 usage/set-up error
[ "$status" -eq 2 ] && { cat "$out/errors.log" >&2; exit 2; }

# 3. A CSV of scores, and the list of rejects (anomalous at the default threshold).
python3 - "$out" <<'PY'
import csv, json, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/results.jsonl") if l.strip()]
with open(f"{out}/scores.csv", "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["path", "score", "anomalous", "mask"])
    for r in rows:
        w.writerow([r["path"], r["score"], r["anomalous"], r["outputs"]["mask"]])
rejects = [r["path"] for r in rows if r["anomalous"]]
open(f"{out}/rejects.txt", "w").write("".join(p + "\n" for p in rejects))
print(f"{len(rows)} inspected, {len(rejects)} rejected -> {out}/scores.csv, {out}/rejects.txt")
PY
grep '^fade: ' "$out/errors.log" | grep -v '^fade: error' > "$out/unreadable.txt" || true
echo "unreadable files: $(wc -l < "$out/unreadable.txt") (see $out/unreadable.txt)"
exit "$status"
