#!/usr/bin/env bash
# Copy a finished run's results (not its model weights) into a folder to commit, with the exact
# params and the commit that produced them:
#   scripts/collect_results.sh results/compare-gsm8k-cpu
#   scripts/collect_results.sh results/compare-gsm8k-cpu --partial   # some stages deliberately not run
# Run it after `dvc repro report` finished (the report and everything it reads up to date),
# before changing params.yaml. --partial collects a report made with `dvc repro -s report`
# after running only some of its stages (`dvc repro TARGET ...`): PROVENANCE then lists the
# stages that did not run; their results are not in the report.
set -euo pipefail
dest=${1:?usage: scripts/collect_results.sh DEST [--partial]}
partial=${2:-}
fail() { printf 'error: %s\n  fix: %s\n' "$1" "$2" >&2; exit 2; }
[ -f metrics/results.md ] || fail "no metrics/results.md: the report stage has not run" "dvc repro"
[ -z "$partial" ] || [ "$partial" = "--partial" ] || fail "unknown option $partial" "use --partial or nothing"
[ "$(dvc status --json report 2>/dev/null || echo '?')" = "{}" ] || \
  fail "the report is out of date: it does not show what its inputs hold now" "dvc repro report (or -s report) first"
stale=$(dvc status --with-deps --json report 2>/dev/null || echo '?')
[ "$stale" = "{}" ] || [ -n "$partial" ] || \
  fail "a stage the report reads is out of date: these results would not match params.yaml" \
       "dvc repro report first, or --partial when stages were left out on purpose"
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
  echo "stages out of date or not run (not part of the report): $(dvc status --json | python -c 'import json,sys; print(sorted(json.load(sys.stdin)) or "none")')"
} > "$dest/PROVENANCE"
echo "collected into $dest"
