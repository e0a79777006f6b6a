"""A fresh clone of a repo with a finished run shows its metrics without a `dvc pull`.

Metrics, plot data and training logs are `cache: false` outputs in folders git keeps, so the
commits carry them: `dvc exp show`, `dvc metrics diff` and `dvc plots diff` between commits
read them from git. (As cached outputs in git-ignored folders they showed nothing until a
pull.) Models and artifacts stay cached outputs: the clone has none of them.
"""

from __future__ import annotations

import json
import math

from dvc_project import repro, set_param, sh

QUALITY = "metrics/quality/toy-s0.json"
HELDOUT = "metrics/heldout/target/toy.json"


def numbers(tree) -> list[float]:
    """Every number in a nested metrics record."""
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in numbers(v)]
    return [float(tree)] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def test_a_fresh_clone_shows_metrics_and_their_diff_without_a_pull(reproduced_copy, tmp_path):
    root, env, _ = reproduced_copy
    set_param(root, "quality.max_positions", 3)  # a second commit whose quality metrics differ
    assert repro(root, env) == {"quality@toy-0"}
    sh(root, env, "git", "add", "-A")
    sh(root, env, "git", "commit", "-qm", "fewer positions for the per-layer agreement")

    clone = tmp_path / "clone"
    sh(tmp_path, env, "git", "clone", "-q", str(root), str(clone))
    assert not (clone / "artifacts").exists() and not (clone / ".dvc" / "cache").exists()  # nothing pulled
    assert json.loads((clone / QUALITY).read_text()) == json.loads((root / QUALITY).read_text())

    rows = json.loads(sh(clone, env, "dvc", "exp", "show", "--json"))
    head = next(r for r in rows if r["rev"] != "workspace")
    files = (head.get("data") or {}).get("metrics") or {}
    for path in (QUALITY, HELDOUT, "metrics/results.json"):
        assert numbers((files.get(path) or {}).get("data")), (path, sorted(files))
    assert not [e for e in head.get("error") or [] if e]

    diff = json.loads(sh(clone, env, "dvc", "metrics", "diff", "HEAD~1", "--json"))
    changed = diff[QUALITY]
    assert changed and all(math.isfinite(v["old"]) and math.isfinite(v["new"]) for v in changed.values())
    every = json.loads(sh(clone, env, "dvc", "metrics", "diff", "HEAD~1", "--all", "--json"))
    unchanged = every[HELDOUT]
    assert unchanged and all(v["old"] == v["new"] is not None for v in unchanged.values())

    plots = json.loads(sh(clone, env, "dvc", "plots", "diff", "HEAD~1", "--json", "-o", str(tmp_path / "plots")))
    revs = {v["rev"] for r in plots["data"]["plots/quality/toy-s0.json"] for v in r["content"]["data"]["values"]}
    assert len(revs) == 2  # both commits' per-layer agreement, from git
