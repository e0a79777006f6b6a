"""Stage `pair@TASK`: exactly one source layer per target layer."""

import json
import sys

from pipeline.core import layout
from pipeline.core.artifacts import read_json, write_json
from pipeline.method.pairing import pair_layers
from pipeline.core.params import check_task, load_params, section
from pipeline.core.runner import CostTag, run_stage


def depth(role: str) -> int:
    return int(json.loads((layout.model_dir(role) / "config.json").read_text())["num_hidden_layers"])


def main() -> None:
    task = sys.argv[1]
    params = load_params()
    check_task(params, task)
    cfg = section(params, "pairing")
    scores = read_json(layout.attribution_file(task), "the attribute stage")["scores"]
    record = pair_layers(str(cfg["strategy"]), depth("source"), depth("target"), scores,
                         int(section(params, "attribution").get("n_critical", 1)))
    write_json(layout.pairing_file(task), record)
    print(f"{task}: target 1..{record['n_target']} <- source {record['pairs']}")


if __name__ == "__main__":
    run_stage(f"pair@{sys.argv[1]}", main, CostTag("semalign", sys.argv[1]))
