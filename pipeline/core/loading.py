"""Loading models and tokenizers from a local directory or a hub name; the vocab check."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.core.errors import PipelineError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise PipelineError(f"unknown dtype {name!r}", f"use one of {sorted(DTYPES)}")
    return DTYPES[name]


def _check_source(name_or_path: str) -> None:
    """A local directory must hold a model; anything else must look like a hub id."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise PipelineError(
                f"{name_or_path} is a directory without config.json",
                "point the model key at a Hugging Face model directory (run the models stage first)",
            )
        return
    is_hub_id = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~"))
    if not is_hub_id:
        raise PipelineError(
            f"model {name_or_path!r} is neither an existing directory nor a hub id (org/name)",
            "run the models stage first, or give a hub id where a hub is reachable",
        )


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    _check_source(name_or_path)
    tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, dtype: str = "bfloat16", placement=None, spread: bool = False):
    """A causal LM in eval mode; hub names work where a hub is reachable.

    With ``placement`` (a :class:`pipeline.compute.placement.Placement`, what :func:`pipeline.compute.placement.place`
    gave the stage) the model is loaded in its dtype onto its device, and with ``spread`` a
    model larger than that GPU is laid out over the GPUs and the CPU (see
    :func:`pipeline.compute.placement.load_kwargs`). This module does not import pipeline.compute.placement: the
    placement brings its own arguments, so stages that only read tokenizers or configs do not
    depend on the compute code.
    """
    from transformers import AutoModelForCausalLM

    _check_source(name_or_path)
    kwargs = {}
    if placement is not None:
        dtype, kwargs = placement.dtype, placement.load_kwargs(name_or_path, spread)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype(dtype), **kwargs)
    model.eval()
    return model


def load_model_blocks(model_dir: str | Path, dtype: str, first: int, last: int | None = None, device: str = "cpu"):
    """The model with only blocks ``first..last`` (1-based, inclusive; ``last=None``: to the
    end) and the non-block parts (embedding, final norm, LM head) loaded.

    A frontier stage trains one block: reading and converting the other blocks' weights was
    most of its start-up. The skipped blocks stay on the meta device, so any use of them
    fails loudly instead of computing with garbage. The loaded tensors are read straight onto
    ``device``. Local safetensors directories only; anything else is loaded whole.
    """
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    from pipeline.core.adapter import ModelAdapter

    d = Path(model_dir)
    files = sorted(d.glob("*.safetensors")) if d.is_dir() else []
    if not files:
        return load_model(str(model_dir), dtype).to(device)
    config = AutoConfig.from_pretrained(str(d))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype))
    adapter = ModelAdapter(model)
    last = adapter.n_layers if last is None else last
    adapter.check_layer(first, "first block to load")
    adapter.check_layer(last, "last block to load")
    skip = tuple(adapter.block_prefix(k) for k in range(1, adapter.n_layers + 1) if not first <= k <= last)
    wanted = {name for name in model.state_dict() if not name.startswith(skip)}
    tensors = {}
    for f in files:
        with safe_open(str(f), framework="pt", device=device) as st:
            for name in st.keys():
                if name in wanted:
                    tensors[name] = st.get_tensor(name).to(torch_dtype(dtype))
    if config.tie_word_embeddings:
        wanted = {n for n in wanted if n not in _tied_names(model)}
    missing = sorted(wanted - set(tensors))
    if missing:
        raise PipelineError(f"{d} lacks tensors {missing[:3]}",
                            "point the model key at a complete Hugging Face safetensors checkpoint")
    model.load_state_dict(tensors, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    adapter.rebuild_buffers(device)
    model.eval()
    return model


def _tied_names(model) -> set[str]:
    out = model.get_output_embeddings()
    return {f"{name}.weight" for name, mod in model.named_modules() if mod is out}


def vocab_list(tokenizer) -> list[str]:
    """Token strings by id (added tokens included)."""
    vocab = tokenizer.get_vocab()
    out = [""] * (max(vocab.values()) + 1)
    for token, idx in vocab.items():
        out[idx] = token
    return out


def check_same_vocab(source_tok, target_tok, source_vocab_rows: int | None = None,
                     target_vocab_rows: int | None = None) -> None:
    """Source and target must share the token list, index for index.

    Extra LM-head rows beyond the tokenizer (padding rows) must match in count too, since
    the alignment map pairs row ``i`` of one head with row ``i`` of the other.
    """
    a, b = vocab_list(source_tok), vocab_list(target_tok)
    diffs = [i for i in range(min(len(a), len(b))) if a[i] != b[i]]
    if diffs or len(a) != len(b):
        shown = ", ".join(f"id {i}: {a[i]!r} vs {b[i]!r}" for i in diffs[:5])
        size = f"sizes {len(a)} vs {len(b)}" if len(a) != len(b) else ""
        raise PipelineError(
            "source and target tokenizers differ: " + "; ".join(x for x in (shown, size) if x),
            "SemAlign needs index-aligned vocabularies: pick a source/target pair of the same family and tokenizer",
        )
    if source_vocab_rows is not None and target_vocab_rows is not None and source_vocab_rows != target_vocab_rows:
        raise PipelineError(
            f"LM heads have {source_vocab_rows} (source) vs {target_vocab_rows} (target) rows",
            "use models whose output embeddings have the same vocabulary size",
        )


def head_rows(model_dir: str | Path) -> int:
    """Rows of a local model's LM head, from config.json alone (no weights read)."""
    import json

    _check_source(str(model_dir))
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if not isinstance(config.get("vocab_size"), int):
        raise PipelineError(f"{model_dir}/config.json has no vocab_size",
                            "point the model key at a Hugging Face model directory (run the models stage first)")
    return config["vocab_size"]


def vocab_record(tokenizer, rows: int) -> dict:
    """What a checked vocabulary is: its size, LM-head rows and a digest of the token list, so
    the stages that depend on the record re-run only when the vocabulary itself changes."""
    import hashlib

    tokens = vocab_list(tokenizer)
    return {"tokens": len(tokens), "head_rows": rows,
            "sha256": hashlib.sha256("\n".join(tokens).encode()).hexdigest()}


def load_lm_head(model_dir: str | Path) -> torch.Tensor:
    """The (V, D) output embedding of a local model directory, read alone from safetensors.

    The alignment map needs only the two LM heads; reading them directly avoids
    instantiating two full models (gigabytes) just to look at one matrix each.
    """
    import json

    from safetensors import safe_open

    from pipeline.core.adapter import FAMILIES

    d = Path(model_dir)
    _check_source(str(d))
    config = json.loads((d / "config.json").read_text())
    spec = FAMILIES.get(config.get("model_type"))
    if spec is None:
        raise PipelineError(f"model family {config.get('model_type')!r} is not supported yet",
                            f"use one of {sorted(FAMILIES)} or add a FamilySpec in pipeline/core/adapter.py")
    embed_key = f"{spec.backbone}.{spec.embed}.weight"
    wanted = [embed_key] if config.get("tie_word_embeddings") else ["lm_head.weight", embed_key]
    files = sorted(d.glob("*.safetensors"))
    for key in wanted:
        for f in files:
            with safe_open(str(f), framework="pt") as st:
                if key in st.keys():
                    return st.get_tensor(key)
    raise PipelineError(f"no output embedding ({' or '.join(wanted)}) in {d}",
                        "point the model key at a complete Hugging Face safetensors checkpoint")
