#!/usr/bin/env bash
# Copy a finished run's results (not its model weights) into a folder to commit, with the exact
# params and the commit that produced them:
#   scripts/collect_results.sh results/compare-gsm8k-cpu
# Run it after `dvc repro report` finished (the report and everything it reads up to date),
# before changing params.yaml.
set -euo pipefail
dest=${1:?usage: scripts/collect_results.sh DEST}
fail() { printf 'error: %s\n  fix: %s\n' "$1" "$2" >&2; exit 2; }
[ -f metrics/results.md ] || fail "no metrics/results.md: the report stage has not run" "dvc repro"
stale=$(dvc status --with-deps --json report 2>/dev/null || echo '?')
[ "$stale" = "{}" ] || fail "the report or a stage it reads is out of date: these results would not match params.yaml" \
                            "dvc repro report first"
mkdir -p "$dest"
cp metrics/results.md metrics/results.csv metrics/results.json params.yaml dvc.lock "$dest"/
for sub in heldout quality curve; do
  [ -d "metrics/$sub" ] && { rm -rf "${dest:?}/$sub"; cp -r "metrics/$sub" "$dest/$sub"; }
done
[ -d plots/curve_png ] && { rm -rf "${dest:?}/curve_png"; cp -r plots/curve_png "$dest/curve_png"; }
{
  echo "commit: $(git rev-parse HEAD)"
  echo "params.yaml differs from the commit's: $(git diff --quiet HEAD -- params.yaml && echo no || echo yes, see params.yaml here)"
  echo "collected: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "stages out of date (not part of the report): $(dvc status --json | python -c 'import json,sys; print(sorted(json.load(sys.stdin)) or "none")')"
} > "$dest/PROVENANCE"
echo "collected into $dest"
