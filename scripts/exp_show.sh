#!/usr/bin/env bash
# `dvc exp show` without the noise columns: one hash column per stage dependency (artifacts/,
# data/, dvclive/, models/, pipeline/, stages/) and the frontier chain's structure (chain.*: DVC lists
# values a stage interpolates from a `vars` file as parameters). Every parameter of
# params.yaml and every metric stay. Extra arguments go to `dvc exp show`, e.g.
#   scripts/exp_show.sh --only-changed --sort-by semalign_kl
#   scripts/exp_show.sh --csv > experiments.csv
set -euo pipefail
exec dvc exp show --drop 'chain\.|artifacts/|data/|dvclive/|models/|pipeline/|stages/' "$@"
