"""LoRA through PEFT: settings, attaching adapters to a target or one block, merging them back.

``frontier.lora`` and ``baselines.lora`` are read the same way. Targets are module roles
(``q``, ``up``, ...), translated to the family's module paths by the
:class:`~pipeline.core.adapter.ModelAdapter`, so params.yaml never names ``self_attn.q_proj``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from pipeline.core.adapter import ModelAdapter, check_roles
from pipeline.core.errors import PipelineError

DEFAULT_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = DEFAULT_TARGETS

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    @classmethod
    def from_params(cls, block: dict[str, Any] | None, where: str = "baselines.lora",
                    default_targets: tuple[str, ...] = DEFAULT_TARGETS) -> "LoraSettings":
        block = dict(block or {})
        unknown = set(block) - {"r", "alpha", "dropout", "targets"}
        if unknown:
            raise PipelineError(f"unknown keys {sorted(unknown)} in {where}", "use r, alpha, dropout, targets")
        s = cls(r=int(block.get("r", cls.r)), alpha=float(block.get("alpha", cls.alpha)),
                dropout=float(block.get("dropout", cls.dropout)),
                targets=tuple(block.get("targets", default_targets)))
        check_roles(s.targets, f"{where}.targets")
        if s.r < 1 or s.alpha <= 0 or not 0 <= s.dropout < 1 or not s.targets:
            raise PipelineError(f"invalid LoRA settings in {where}: {s}",
                                "use r >= 1, alpha > 0, 0 <= dropout < 1 and at least one target module")
        return s


def attach(model: nn.Module, settings: LoraSettings):
    """Wrap ``model`` in a PEFT model with fresh LoRA adapters on the target modules.

    Only the adapters are trainable; the base weights are frozen by PEFT.
    """
    from peft import LoraConfig, get_peft_model

    paths = ModelAdapter(model).linear_paths(settings.targets)  # validates roles
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=paths, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def attach_block(block: nn.Module, adapter: ModelAdapter, settings: LoraSettings):
    """Wrap one decoder block (of ``adapter``'s model) in a PEFT model with fresh adapters on
    its target modules: the frontier's ``trainable: lora``."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=adapter.linear_paths(settings.targets))
    return get_peft_model(block, config)


def lora_layer(peft_model, k: int, role: str):
    """The PEFT LoRA layer wrapping target module ``role`` of block ``k`` (1-based)."""
    from peft.tuners.lora import LoraLayer

    module = ModelAdapter(peft_model.get_base_model()).linear(k, role)
    if not isinstance(module, LoraLayer):
        raise PipelineError(f"block {k} module {role!r} has no LoRA adapter",
                            f"add {role!r} to the LoRA targets (baselines.lora.targets)")
    return module


def merge(peft_model) -> nn.Module:
    """Fold the adapters into the base weights and return the plain transformers model."""
    model = peft_model.merge_and_unload()
    model.eval()
    return model
