"""A plan before a long run: per kind of stage, how many stages, the disk their outputs take
and the peak memory one process needs on its device and on the host, from the models'
configs and the task files alone (no weights are read).

    python -m pipeline.compute.plan [PRESET] [--params params.yaml] [--processes N] [--json]

With a preset the plan is for params.yaml with the preset applied (nothing is written).

Where the numbers come from:

- model sizes: the model built from its config on the meta device (exact parameter counts);
  the config is read from ``models/ROLE``, the spec's own directory, the local Hugging Face
  cache, or ``presets/model-configs/`` (the default and paper pairs, for planning offline);
- supervised positions and padded widths: the task files tokenised (exact) when the data
  stage has run and a tokenizer is at hand, else typical answer and prompt lengths per task
  (``TYPICAL``; said so in the output);
- stage counts: dvc.yaml's ``foreach``/``matrix`` expanded with params.yaml and chain.yaml,
  as DVC expands them;
- disk: tensor shapes x dtype sizes, plus a small allowance per file (safetensors header,
  logs); memory: weights x dtype plus a rough working set per batch (an estimate: activation
  memory depends on kernels and allocator).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline.core.chain import block_number
from pipeline.core.errors import PipelineError
from pipeline.compute.sizes import ModelShape

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LOG_FILES = 1024  # a frontier stage's log.json and its DVCLive log under dvclive/ (measured 450-600 bytes)
CONFIGS = Path(__file__).resolve().parents[2] / "presets" / "model-configs"
# Typical (prompt tokens, answer tokens) per example, for planning before the data stage has run.
TYPICAL = {"mmlu": (160, 3), "gsm8k": (90, 130), "humaneval": (160, 130), "mbpp": (120, 110), "toy": (30, 6)}
TYPICAL_DEFAULT = (128, 64)


def file_bytes(tensor_bytes: int, tensors: int, metadata: int = 32) -> int:
    """A safetensors file: its tensors and a JSON header (about 96 bytes per tensor, measured)."""
    return tensor_bytes + 64 + 96 * tensors + metadata


HEADER = file_bytes(0, 1)  # a one-tensor file's header


# --- model and data shapes ----------------------------------------------------------------------
def model_config(spec: str, role: str, root: Path):
    """The config of ``models.ROLE`` from wherever it can be read without downloading weights."""
    from transformers import AutoConfig

    local = model_dir(root, role, spec)
    if local is not None:
        return AutoConfig.from_pretrained(str(local))
    shipped = CONFIGS / (spec.replace(":", "--").replace("/", "--") + ".json")
    if shipped.is_file():
        from transformers import AutoConfig as Auto

        data = json.loads(shipped.read_text())
        return Auto.for_model(data.pop("model_type"), **data)
    if spec.count("/") == 1:
        try:
            return AutoConfig.from_pretrained(spec, local_files_only=True)
        except OSError:
            pass
    raise PipelineError(f"no config.json for models.{role} ({spec}) here",
                        f"run `dvc repro models@{role}`, point models.{role} at a local model directory, or add "
                        f"its config as presets/model-configs/{spec.replace(':', '--').replace('/', '--')}.json")


def materialized_from(model_dir: Path) -> str | None:
    """The spec a models/ROLE directory was made from (None if it does not say)."""
    from pipeline.core.materialize import PROVENANCE

    record = model_dir / PROVENANCE
    return json.loads(record.read_text()).get("spec") if record.is_file() else None


def model_dir(root: Path, role: str, spec: str) -> Path | None:
    """A local directory holding the model ``models.ROLE`` names: models/ROLE if it was made
    from that spec, or the spec itself when it is a directory."""
    made = root / "models" / role
    if (made / "config.json").is_file() and materialized_from(made) == spec:
        return made
    own = Path(spec).expanduser()
    return own if (own / "config.json").is_file() else None


def tokenizer_bytes(local: Path | None, vocab: int) -> int:
    """Bytes of a model directory besides its weights (tokenizer, configs): measured where the
    directory is at hand, else typical for the vocabulary size."""
    if local is not None:
        return sum(f.stat().st_size for f in local.iterdir() if f.is_file() and f.suffix != ".safetensors")
    return 12 * 2**20 if vocab > 100_000 else 2 * 2**20


@dataclass(frozen=True)
class SplitShape:
    examples: int
    positions: int  # supervised positions
    width: int  # padded length T
    exact: bool  # tokenised from the task file (else typical lengths)

    @property
    def tokens_bytes(self) -> int:
        """tokens.safetensors: input_ids and attention_mask int64, supervised uint8, the ids in its header."""
        return file_bytes(self.examples * self.width * 17, 3, 24 * self.examples)


def split_shape(root: Path, task: str, split: str, params: dict, tokenizer) -> SplitShape:
    data = params.get("data") or {}
    max_length, supervise = int(data.get("max_length", 512)), str(data.get("supervise", "answer"))
    path = root / "data" / "tasks" / task / f"{split}.jsonl"
    if tokenizer is not None and path.is_file():
        from pipeline.core.data import encode, read_jsonl

        records = read_jsonl(path)
        if records:
            enc = encode(tokenizer, records, max_length, supervise)
            return SplitShape(len(enc.ids), enc.n_supervised, enc.input_ids.shape[1], True)
    n = int(((params.get("tasks_config") or {}).get(task) or {}).get(split, 0))
    prompt, answer = TYPICAL.get(task, TYPICAL_DEFAULT)
    per = answer if supervise == "answer" else prompt + answer - 1
    return SplitShape(n, n * min(per, max_length - 1), min(max_length, 2 * (prompt + answer)), False)


def load_tokenizer_if_any(local: Path | None):
    if local is None:
        return None
    from pipeline.core.loading import load_tokenizer

    return load_tokenizer(str(local))


# --- stage counts ------------------------------------------------------------------------------
def _resolve(ref: Any, context: dict) -> Any:
    """A literal list, or a ``${dotted.path}`` into params.yaml / chain.yaml."""
    if isinstance(ref, str) and ref.startswith("${") and ref.endswith("}"):
        value: Any = context
        for part in ref[2:-1].split("."):
            value = (value or {}).get(part) if isinstance(value, dict) else None
        return value if value is not None else []
    return ref


def stage_counts(dvc_yaml: dict, context: dict) -> dict[str, int]:
    """Stages per name in dvc.yaml, with foreach/matrix expanded as DVC does (dict: its keys)."""
    counts = {}
    for name, stage in (dvc_yaml.get("stages") or {}).items():
        if "foreach" in stage:
            counts[name] = len(_resolve(stage["foreach"], context))
        elif "matrix" in stage:
            counts[name] = math.prod(len(_resolve(axis, context)) for axis in stage["matrix"].values())
        else:
            counts[name] = 1
    return counts


# --- the plan --------------------------------------------------------------------------------------
@dataclass
class StagePlan:
    kind: str
    stages: int
    disk_bytes: int  # all stages of the kind together
    device_bytes: int  # peak of one process on its device
    host_bytes: int  # peak of one process in host memory
    note: str = ""


@dataclass
class Inputs:
    params: dict
    source: ModelShape
    target: ModelShape
    splits: dict[tuple[str, str], SplitShape]
    compute_bytes: int  # the dtype models compute in on the planned device
    storage_bytes: int
    hidden_bytes: int
    train_bytes: int
    source_files: int
    target_files: int
    processes: int

    def split(self, task: str, name: str) -> SplitShape:
        return self.splits[(task, name)]

    def checkpoint_bytes(self, shape: ModelShape) -> int:
        """A model's weights in the storage dtype, as one safetensors file."""
        return file_bytes(shape.parameters * self.storage_bytes, shape.tensors)

    @property
    def tasks(self) -> list[str]:
        return list(self.params.get("tasks") or [])


def _states_bytes(x: Inputs, s: SplitShape) -> int:
    """A chain state file: h (N, T, D_t) in the storage dtype and the token tensors."""
    return file_bytes(s.examples * s.width * (x.target.width * x.storage_bytes + 17), 4)


def _block_act(shape: ModelShape, batch: int, width: int, nbytes: int, grad: bool) -> int:
    """Working set of one block on a batch: a few D-wide and I-wide tensors per token (x3 for
    the saved activations and gradients of a trained block)."""
    per_token = 8 * shape.width + 3 * shape.intermediate
    return batch * width * per_token * nbytes * (3 if grad else 1)


def estimate(kind: str, stages: int, x: Inputs) -> StagePlan:
    p, src, tgt = x.params, x.source, x.target
    top_k = lambda block: min(int((p.get(block) or {}).get("top_k", 64)), src.vocab)  # noqa: E731
    per_task: Callable[[Callable[[str], int]], int] = lambda f: sum(f(t) for t in x.tasks)  # noqa: E731
    seeds = len(p.get("seeds") or [0])
    cb = x.compute_bytes
    if kind == "models":
        disk = x.checkpoint_bytes(src) + x.source_files + x.checkpoint_bytes(tgt) + x.target_files
        return StagePlan(kind, stages, disk, 0, src.parameters * 4, "weights in models.dtype; host: one model")
    if kind == "align":
        disk = tgt.width * src.width * 4 + HEADER
        return StagePlan(kind, stages, disk, 0, (src.vocab * (src.width + tgt.width)) * 8 * 3, "LM heads in float64")
    if kind == "extract":
        def one(task: str) -> int:
            total = 0
            for name in ("transfer", "validation"):
                s = x.split(task, name)
                total += (src.layers + 1) * (s.positions * src.width * x.hidden_bytes + HEADER)
                total += file_bytes(s.positions * top_k("extract") * 12, 2) + s.tokens_bytes
            return total
        s = max((x.split(t, "transfer") for t in x.tasks), key=lambda v: v.positions)
        batch = int((p.get("extract") or {}).get("batch_size", 4))
        device = src.parameters * cb + _block_act(src, batch, s.width, cb, False) + batch * s.width * src.vocab * 4
        host = s.positions * (src.layers + 1) * src.width * x.hidden_bytes
        return StagePlan(kind, stages, per_task(one), device, host, "every source layer at every supervised position")
    if kind == "attribute":
        s = max((x.split(t, "attribution") for t in x.tasks), key=lambda v: v.width)
        batch = int((p.get("attribution") or {}).get("batch_size", 2))
        device = src.parameters * cb + src.layers * _block_act(src, batch, s.width, cb, True) // 3 \
            + 3 * batch * s.width * src.vocab * 4
        return StagePlan(kind, stages, stages * 2048, device, 0, "activations of every layer kept for one backward")
    if kind == "fisher":
        first = max(1, block_number(int((p.get("frontier") or {}).get("layer_from", 1)), tgt.layers))

        def one(task: str) -> int:  # layer 0, then the blocks with a layer objective (frontier.layer_from)
            s = x.split(task, "transfer")
            k = min(int((p.get("fisher") or {}).get("top_k", 64)), tgt.vocab)
            layer = file_bytes(s.positions * (tgt.width * x.hidden_bytes + k * 16) + tgt.vocab * 4, 5)
            return s.positions * tgt.width * x.hidden_bytes + HEADER + max(0, tgt.layers - first) * layer
        return StagePlan(kind, stages, per_task(one), tgt.parameters * cb + 256 * tgt.vocab * 4 * 4, 0,
                         f"aligned state + top-K Fisher statistics of blocks {first}..{tgt.layers - 1}")
    if kind == "embed":
        s = max((x.split(t, "transfer") for t in x.tasks), key=lambda v: v.examples * v.width)
        return StagePlan(kind, stages, per_task(lambda t: _states_bytes(x, x.split(t, "transfer"))),
                         tgt.parameters * cb, s.examples * s.width * tgt.width * 4, "h^(0) of the transfer split")
    if kind == "frontier":
        f = p.get("frontier") or {}
        block = file_bytes(tgt.block_parameters * x.storage_bytes, tgt.block_tensors)
        disk = seeds * per_task(lambda t: tgt.layers * (block + _states_bytes(x, x.split(t, "transfer")) + LOG_FILES))
        s = max((x.split(t, "transfer") for t in x.tasks), key=lambda v: v.examples * v.width)
        batch = max(1, math.ceil(int(f.get("batch_size", 4)) / x.processes))
        kl_from = int(f.get("kl_from", 0))
        # The first block trained with the output KL loads and runs blocks k..L and the whole LM head.
        loaded = tgt.layers - (max(1, block_number(kl_from, tgt.layers)) if kl_from else tgt.layers) + 1
        trained = tgt.block_parameters * (2 * x.train_bytes + 8)  # weights, gradient, AdamW moments
        device = (tgt.head_parameters * x.train_bytes + (loaded - 1) * tgt.block_parameters * cb + trained
                  + _block_act(tgt, batch, s.width, x.train_bytes, True)  # the trained block
                  + (loaded - 1) * _block_act(tgt, batch, s.width, cb, True)  # the gradient flows back through these
                  + 3 * batch * s.width * tgt.vocab * 4)  # float32 logits, log-softmax and their gradient
        host = s.examples * s.width * tgt.width * (x.storage_bytes + 4)
        return StagePlan(kind, stages, disk, device, host,
                         f"one block + h^(k) per stage; device: blocks {tgt.layers - loaded + 1}..{tgt.layers} "
                         "(output KL)")
    if kind == "export":
        disk = seeds * len(x.tasks) * (x.checkpoint_bytes(tgt) + x.target_files)
        return StagePlan(kind, stages, disk, 0, tgt.parameters * 4, "on the CPU")
    if kind.startswith("baseline-"):
        s = max((x.split(t, "transfer") for t in x.tasks), key=lambda v: v.width)
        device = tgt.parameters * cb + tgt.layers * _block_act(tgt, 4, s.width, cb, True) // 3
        return StagePlan(kind, stages, stages * (x.checkpoint_bytes(tgt) + x.target_files), device, 0,
                         "one merged model per run")
    if kind in ("quality", "analysis", "curve", "heldout"):
        s = max((x.split(t, "validation") for t in x.tasks), key=lambda v: v.positions)
        models = 2 if kind in ("quality", "analysis") else 1  # the untouched target and the transferred one
        device = models * tgt.parameters * cb + 256 * tgt.vocab * 4 * 3  # + a chunk of full-vocabulary logits
        if kind == "curve":  # the split's states through every block, on the device
            device += s.examples * s.width * tgt.width * cb
        host = tgt.layers * s.positions * tgt.width * 4 if kind == "analysis" else 0
        per_stage = 128 * 1024 if kind == "curve" else 64 * 1024  # JSON records (and a PNG for curve)
        return StagePlan(kind, stages, stages * per_stage, device, host,
                         "per-example records" if kind == "heldout" else "metrics and plots")
    if kind.startswith("evaluate"):
        bench = (p.get("evaluation") or {}).get("benchmarks") or {}
        new = max([int((b or {}).get("max_new_tokens", 256)) for b in bench.values()] or [256])
        batch = int((p.get("evaluation") or {}).get("batch_size", 4))
        kv = 2 * src.layers * batch * (new + 1024) * src.width * cb  # an upper bound: full heads
        return StagePlan(kind, stages, stages * 256 * 1024, src.parameters * cb + kv, 0,
                         "samples and metrics; device: the larger model + its KV cache")
    return StagePlan(kind, stages, 0, 0, 0, "no model; JSON/JSONL records (not sized)")


def make_inputs(params: dict, root: Path, processes: int | None = None) -> Inputs:
    from pipeline.compute.placement import DTYPE_NAMES, process_count, settings

    s = settings(params)
    models = params.get("models") or {}
    specs = {role: str(models.get(role, "")) for role in ("source", "target")}
    local = {role: model_dir(root, role, spec) for role, spec in specs.items()}
    source = ModelShape.from_config(model_config(specs["source"], "source", root))
    target = ModelShape.from_config(model_config(specs["target"], "target", root))
    on_gpu = s.device != "cpu" and (s.device.startswith("cuda") or _has_cuda())
    compute = s.dtype["cuda" if on_gpu else "cpu"]
    compute = "bfloat16" if compute == "auto" or compute not in DTYPE_NAMES else compute
    tokenizer = load_tokenizer_if_any(local["source"])
    splits = {(t, name): split_shape(root, t, name, params, tokenizer) for t in params.get("tasks") or []
              for name in ("attribution", "transfer", "validation")}
    storage = str(models.get("dtype", "bfloat16"))
    hidden = str((params.get("extract") or {}).get("hidden_dtype", "bfloat16"))
    if processes is None:  # what compute.processes gives on this machine
        processes = process_count(s) if s.processes != "auto" or on_gpu else 1
    elif processes < 1:
        raise PipelineError(f"--processes is {processes}", "plan for at least 1 process")
    return Inputs(params, source, target, splits, DTYPE_BYTES[compute], DTYPE_BYTES[storage], DTYPE_BYTES[hidden],
                  DTYPE_BYTES[s.train_dtype], tokenizer_bytes(local["source"], source.vocab),
                  tokenizer_bytes(local["target"], target.vocab), processes)


def _has_cuda() -> bool:
    from pipeline.compute.placement import cuda_count

    return cuda_count() > 0


def plan(params: dict, root: Path = Path("."), processes: int | None = None) -> tuple[list[StagePlan], Inputs]:
    """The plan for ``params``; ``processes``: per data-parallel stage (default: what
    compute.processes gives on this machine; give the GPU count to plan another machine)."""
    x = make_inputs(params, root, processes)
    chain = yaml.safe_load((root / "chain.yaml").read_text()) if (root / "chain.yaml").is_file() else {}
    counts = stage_counts(yaml.safe_load((root / "dvc.yaml").read_text()), {**params, **(chain or {})})
    kinds: dict[str, int] = {}
    for name, n in counts.items():
        kind = next((k for k in ("evaluate", "heldout") if name.startswith(k)), name)
        kinds[kind] = kinds.get(kind, 0) + n
    if "frontier" in kinds:  # the chain.yaml on disk may be for other params (a preset): count from them
        kinds["frontier"] = len(x.tasks) * len(params.get("seeds") or [0]) * x.target.layers
    return [estimate(kind, n, x) for kind, n in kinds.items() if n], x


def with_preset(params: dict, preset: Path) -> dict:
    from pipeline.core.preset import merge

    out = copy.deepcopy(params)
    merge(out, yaml.safe_load(preset.read_text()) or {})
    return out


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def render(rows: list[StagePlan], x: Inputs) -> str:
    exact = all(s.exact for s in x.splits.values())
    lines = [f"source: {x.source.layers} x {x.source.width}, {x.source.parameters / 1e9:.2f} B parameters; "
             f"target: {x.target.layers} x {x.target.width}, {x.target.parameters / 1e9:.2f} B parameters",
             "positions: " + ("tokenised from data/tasks (exact)" if exact else
                              "typical answer lengths per task (run the data stage for exact numbers)"),
             f"processes per data-parallel stage: {x.processes}",
             "",
             f"{'stage':<22} {'stages':>6} {'disk':>10} {'device peak':>12} {'host peak':>10}  note",
             f"{'-' * 22} {'-' * 6} {'-' * 10} {'-' * 12} {'-' * 10}  {'-' * 4}"]
    for r in rows:
        lines.append(f"{r.kind:<22} {r.stages:>6} {human(r.disk_bytes):>10} {human(r.device_bytes):>12} "
                     f"{human(r.host_bytes):>10}  {r.note}")
    total = sum(r.disk_bytes for r in rows)
    lines += ["", f"{sum(r.stages for r in rows)} stages; outputs {human(total)} on disk "
                  "(the DVC cache hardlinks them: no second copy)",
              f"largest device need: {human(max(r.device_bytes for r in rows))} per process "
              f"(estimate; weights x dtype plus a working set)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from pipeline.core.params import load_params
    from pipeline.core.runner import guarded

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", nargs="?", type=Path, help="a preset to plan for (params.yaml is not changed)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--processes", type=int, help="plan for N data-parallel processes (a machine with N GPUs); "
                                                   "default: what compute.processes gives on this machine")
    ap.add_argument("--json", action="store_true", help="one JSON record per stage kind instead of the table")
    args = ap.parse_args(argv)

    def run() -> None:
        params = load_params(args.params)
        if args.preset:
            params = with_preset(params, args.preset)
        rows, x = plan(params, args.params.parent, args.processes)
        print(json.dumps([asdict(r) for r in rows], indent=1) if args.json else render(rows, x))

    return guarded("plan", run)


if __name__ == "__main__":
    raise SystemExit(main())
