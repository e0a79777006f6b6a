#!/usr/bin/env bash
# Queue the reviewer ablations as DVC experiments and run them (see docs/experiments.md).
#
#   scripts/ablations.sh                                    # the four sweeps below, 1 worker
#   scripts/ablations.sh frontier.objective=fisher,cosine   # only the sweeps given (-S syntax)
#   scripts/ablations.sh "frontier.objective=cosine frontier.layer_weight=1"   # two -S in one sweep
#   JOBS=2 scripts/ablations.sh     # workers for `dvc queue start`
#   START=0 scripts/ablations.sh    # only queue; run later with `dvc queue start`
#   TARGETS="curve@gsm8k-0" scripts/ablations.sh   # run only what these stages need (no benchmarks)
#   WAIT=1 scripts/ablations.sh     # block until this batch is done, stop the workers,
#                                   # exit 1 if any of its experiments failed
#
# One factor at a time around params.yaml, not a grid. A point equal to the baseline is
# restored from the run cache instead of being recomputed.
set -euo pipefail

sweeps=("$@")
if [ ${#sweeps[@]} -eq 0 ]; then
  sweeps=(
    "frontier.layer_weight=0,0.1,1"                          # the layer objective's weight
    "frontier.kl_from=0"                                     # output KL on the last block only
    "frontier.lr=2e-5"
    "frontier.trainable=lora frontier.lr=1e-3"              # LoRA adapters start at 0: a larger lr
    "frontier.objective=cosine,relation frontier.layer_weight=1"   # objectives at full weight
    "fisher.interface=residual frontier.layer_weight=1"      # vs fisher at full weight above
  )
fi

fail() { printf 'error: %s\n  fix: %s\n' "$1" "$2" >&2; exit 2; }

# Queued runs are built from the last commit plus changes to tracked files, and each one
# is saved as a git commit: check what would otherwise fail later, inside the workers.
git rev-parse -q --verify HEAD >/dev/null || fail "the repository has no commit" "commit the project first"
git var GIT_COMMITTER_IDENT >/dev/null 2>&1 \
  || fail "git has no user identity; queued experiments cannot be saved" \
          "git config user.name NAME && git config user.email EMAIL"
untracked=$(git ls-files --others --exclude-standard)
[ -z "$untracked" ] || fail "untracked files would be missing from queued runs: ${untracked//$'\n'/ }" \
                            "git add them (or list them in .gitignore)"

names=()
for sweep in "${sweeps[@]}"; do
  # shellcheck disable=SC2086  # TARGETS is a space-separated list of stage names
  set_args=()
  for s in $sweep; do set_args+=(-S "$s"); done   # "a=1 b=2": several overrides in one sweep
  out=$(dvc exp run --queue "${set_args[@]}" ${TARGETS:-})
  echo "$out"
  while read -r name; do names+=("$name"); done < <(sed -n "s/^Queued experiment '\([^']*\)'.*/\1/p" <<<"$out")
done

[ "${START:-1}" = 1 ] || exit 0
# The worker is a detached process that inherits stdout/stderr: keep it off ours, or a
# caller reading our output through a pipe would wait for the worker to exit.
dvc queue start -j "${JOBS:-1}" </dev/null >/dev/null 2>&1
echo "started ${JOBS:-1} worker(s) for ${#names[@]} experiment(s); follow with: dvc queue status"

[ "${WAIT:-0}" = 1 ] || exit 0
status_of() { dvc queue status 2>/dev/null | awk -v n="$1" '$2 == n {print $NF}'; }
deadline=$(( SECONDS + ${WAIT_TIMEOUT:-86400} ))
for name in "${names[@]}"; do
  while :; do
    state=$(status_of "$name")
    case "$state" in Success|Failed) break ;; esac
    [ "$SECONDS" -lt "$deadline" ] || { state="still ${state:-unknown} after ${WAIT_TIMEOUT:-86400} s"; break; }
    sleep 5  # each `dvc queue status` costs a second of CPU the workers need
  done
  echo "$name: $state"
  [ "$state" = Success ] || failed=1
done
dvc queue stop </dev/null >/dev/null 2>&1 || true
exit "${failed:-0}"
