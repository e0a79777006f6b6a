"""Where each model family keeps its parts: the only place that knows layer paths.

Everything else asks a :class:`ModelAdapter` for blocks, the final norm, the LM head or
"run blocks i..j on these hidden states". Supporting a new decoder-only family means one
entry in ``FAMILIES`` (and, if its blocks take different arguments, a subclass).

Layer numbering follows method.md: blocks are 1-based, ``h^(0)`` is the embedding output,
``h^(l)`` is the residual stream after block ``l`` (before the final norm).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from pipeline.core.errors import PipelineError


def input_device(model) -> torch.device:
    """Where a model's inputs go: its embedding's device; for a model spread by a device map, the
    first GPU it uses (offloaded parts are brought there by Accelerate's hooks)."""
    spread = getattr(model, "hf_device_map", None)
    if spread:
        gpus = [d for d in spread.values() if d not in ("cpu", "disk")]
        first = gpus[0] if gpus else "cpu"
        return torch.device(f"cuda:{first}" if isinstance(first, int) else first)
    embeddings = getattr(model, "get_input_embeddings", None)
    return embeddings().weight.device if embeddings is not None else next(model.parameters()).device


@dataclass(frozen=True)
class FamilySpec:
    backbone: str  # attribute of the CausalLM holding the decoder stack
    layers: str  # attribute of the backbone: the ModuleList of blocks
    norm: str  # attribute of the backbone: the final norm
    embed: str  # attribute of the backbone: the token embedding
    rotary: str = "rotary_emb"  # attribute of the backbone computing position embeddings
    attn: str = "self_attn"  # attribute of a block: the attention sub-layer
    mlp: str = "mlp"  # attribute of a block: the feed-forward sub-layer
    # role -> path of the linear module inside a block; roles are the names users write in
    # params.yaml (LoRA targets, transferred modules), paths are what the family calls them.
    linears: tuple[tuple[str, str], ...] = (
        ("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
        ("o", "self_attn.o_proj"), ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"),
        ("down", "mlp.down_proj"),
    )


_LLAMA_LIKE = FamilySpec(backbone="model", layers="layers", norm="norm", embed="embed_tokens")

FAMILIES: dict[str, FamilySpec] = {
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
}


def linear_roles() -> tuple[str, ...]:
    """Every role some family names (q, k, v, o, gate, up, down): what params.yaml may write as
    LoRA targets or transferred modules, checked before any model is loaded."""
    roles = dict.fromkeys(role for spec in FAMILIES.values() for role, _ in spec.linears)
    return tuple(roles)


def check_roles(roles: Sequence[str], where: str) -> None:
    """Fail naming the roles to write when ``roles`` (a params.yaml list such as
    ``frontier.lora.targets``) holds anything else; module names (``v_proj``, the spelling
    ``frontier.lora.targets`` once used) are answered with their roles."""
    known = linear_roles()
    unknown = [r for r in roles if r not in known]
    if not unknown:
        return
    as_role = {path.rsplit(".", 1)[-1]: role for spec in FAMILIES.values() for role, path in spec.linears}
    if all(r in as_role for r in unknown):
        spelled = [as_role.get(r, r) for r in roles]
        raise PipelineError(f"{where} names modules {unknown}: module lists are written as roles, the same for "
                            "every model family (pipeline/core/adapter.py maps them to each family's modules)",
                            f"write {where.rsplit('.', 1)[-1]}: [{', '.join(spelled)}]")
    raise PipelineError(f"{where} has unknown module roles {unknown}", f"use roles from {list(known)}")


class ModelAdapter:
    """Uniform access to a Hugging Face decoder-only causal LM."""

    def __init__(self, model: nn.Module) -> None:
        model_type = getattr(model.config, "model_type", "?")
        if model_type not in FAMILIES:
            raise PipelineError(
                f"model family {model_type!r} is not supported yet",
                f"use one of {sorted(FAMILIES)} or add a FamilySpec for it in pipeline/core/adapter.py",
            )
        self.model = model
        self.spec = FAMILIES[model_type]
        self.backbone = getattr(model, self.spec.backbone)

    # --- parts ------------------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def blocks(self) -> nn.ModuleList:
        return getattr(self.backbone, self.spec.layers)

    @property
    def final_norm(self) -> nn.Module:
        return getattr(self.backbone, self.spec.norm)

    @property
    def embedding(self) -> nn.Module:
        return getattr(self.backbone, self.spec.embed)

    @property
    def lm_head(self) -> torch.Tensor:
        """(V, D) output embedding matrix (tied or untied)."""
        return self.model.get_output_embeddings().weight

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def width(self) -> int:
        return int(self.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.lm_head.shape[0])

    def block(self, k: int) -> nn.Module:
        """Block ``k`` (1-based)."""
        self.check_layer(k)
        return self.blocks[k - 1]

    def block_prefix(self, k: int) -> str:
        """State-dict key prefix of block ``k`` (1-based), e.g. ``model.layers.3.``."""
        self.check_layer(k)
        return f"{self.spec.backbone}.{self.spec.layers}.{k - 1}."

    def rebuild_buffers(self, device: str | torch.device = "cpu") -> None:
        """Recompute buffers that are derived, not stored (rotary frequencies), on ``device``,
        after a load that built the model on the meta device."""
        rotary = getattr(self.backbone, self.spec.rotary)
        setattr(self.backbone, self.spec.rotary, type(rotary)(config=self.config).to(device))

    # --- per-block linear modules -------------------------------------------------------
    @property
    def linear_roles(self) -> tuple[str, ...]:
        """Roles of the per-block linear modules, e.g. ``("q", ..., "down")``."""
        return tuple(role for role, _ in self.spec.linears)

    def linear_path(self, role: str) -> str:
        """Path of a linear module inside a block, e.g. ``self_attn.q_proj`` for ``q``."""
        paths = dict(self.spec.linears)
        if role not in paths:
            raise PipelineError(
                f"unknown linear module {role!r} for {self.config.model_type}",
                f"use module roles from {list(paths)}",
            )
        return paths[role]

    def linear_paths(self, roles: Sequence[str]) -> list[str]:
        """Paths inside a block of the modules with ``roles`` (what PEFT's ``target_modules`` takes)."""
        return sorted({self.linear_path(role) for role in roles})

    def linear(self, k: int, role: str) -> nn.Module:
        """The ``role`` linear module of block ``k`` (1-based)."""
        return self.block(k).get_submodule(self.linear_path(role))

    def linear_weight_key(self, k: int, role: str) -> str:
        """State-dict key of that module's weight, e.g. ``model.layers.0.mlp.up_proj.weight``."""
        return f"{self.block_prefix(k)}{self.linear_path(role)}.weight"

    def attention(self, k: int) -> nn.Module:
        return getattr(self.block(k), self.spec.attn)

    def feed_forward(self, k: int) -> nn.Module:
        return getattr(self.block(k), self.spec.mlp)

    def check_layer(self, k: int, what: str = "layer") -> None:
        if not 1 <= k <= self.n_layers:
            raise PipelineError(
                f"{what} {k} is outside the model ({self.config.model_type} has blocks 1..{self.n_layers})",
                "fix the layer index (blocks are numbered from 1) or regenerate the chain with "
                "`python -m pipeline.core.chain`",
            )

    # --- computation ------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """h^(0): (B, T) ids -> (B, T, D)."""
        return self.embedding(input_ids)

    def _mask_and_positions(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None):
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        b, t = hidden.shape[:2]
        position_ids = torch.arange(t, device=hidden.device).unsqueeze(0).expand(b, -1)
        kwargs = dict(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask,
                      cache=None, position_ids=position_ids)
        masks = {"full_attention": create_causal_mask(**kwargs)}
        if "sliding_attention" in (getattr(self.config, "layer_types", None) or []):
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
        rotary = getattr(self.backbone, self.spec.rotary)
        return masks, position_ids, rotary(hidden, position_ids)

    def run_blocks(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None,
        start: int,
        end: int,
        collect: bool = False,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Run blocks ``start..end`` (1-based, inclusive) on ``hidden`` = h^(start-1).

        hidden: (B, T, D); attention_mask: (B, T) with 1 for real tokens (right padding).
        Returns h^(end), or with ``collect`` the list [h^(start), ..., h^(end)].
        """
        self.check_layer(start)
        self.check_layer(end)
        masks, position_ids, pos_emb = self._mask_and_positions(hidden, attention_mask)
        layer_types = getattr(self.config, "layer_types", None)
        outs = []
        for k in range(start, end + 1):
            kind = layer_types[k - 1] if layer_types else "full_attention"
            hidden = self.blocks[k - 1](
                hidden, attention_mask=masks[kind], position_embeddings=pos_emb, position_ids=position_ids
            )
            if isinstance(hidden, tuple):  # older block signatures return (hidden, ...)
                hidden = hidden[0]
            if collect:
                outs.append(hidden)
        return outs if collect else hidden

    def supervised_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, supervised: torch.Tensor
    ) -> torch.Tensor:
        """Output logits at the supervised positions only, (P, V), rows in (example, position) order.

        Applying the LM head to the P selected positions instead of all B * T keeps the
        (B, T, V) logits tensor, and its gradient, out of memory.
        """
        final = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.model.get_output_embeddings()(final[supervised])

    def logit_lens(self, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits W n(h) of any residual state; with ``rows`` only those vocabulary rows.

        hidden: (..., D); rows: (..., K) ids or None -> (..., K) or (..., V).
        """
        normed = self.final_norm(hidden)
        weight = self.lm_head
        if rows is None:
            return normed @ weight.T.to(normed.dtype)
        picked = weight[rows].to(normed.dtype)  # (..., K, D)
        return (picked @ normed.unsqueeze(-1)).squeeze(-1)
