"""What trains during fine-tuning: freezing, partial unfreezing and discriminative learning rates.

Every model answers ``blocks()`` (body stages, input -> output) and has a ``head``, so the
strategies are plain functions over those, counted from the top::

    depth 0 = head, depth 1 = last block, depth 2 = the block before it, ...

- ``full``: every weight trains; with ``layer_lr_decay`` d < 1 the group at depth k gets lr * d**k.
- ``head``: the body is frozen, only the head trains (a linear probe).
- ``partial``: the head and the last N blocks train; optionally unfrozen one block at a time.
- ``lora``: adapters (see ``lora.py``) and the head train; every base weight is frozen.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mnistlab.errors import ConfigError
from mnistlab.models.lora import is_adapter_param

STRATEGIES = ("full", "head", "partial", "lora")


def check_strategy(strategy: str) -> None:
    """Raise ConfigError unless ``strategy`` is a known one."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown fine-tuning strategy '{strategy}'", hint=f"choose one of {', '.join(STRATEGIES)}")


def layer_groups(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` from the top down: the head, then the body's blocks from last to first."""
    blocks = list(model.body.named_children())  # the same order as model.blocks()
    return [("head", model.head)] + [(f"body.{name}", block) for name, block in reversed(blocks)]


def set_trainable(module: nn.Module, trainable: bool) -> None:
    """Switch ``requires_grad`` of every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad_(trainable)


def trained_depth(strategy: str, num_blocks: int, partial_blocks: int) -> int:
    """How many layer groups train, counted from the head (the head is 1)."""
    check_strategy(strategy)
    if strategy in ("head", "lora"):
        return 1
    if strategy == "full":
        return num_blocks + 1
    if partial_blocks < 0:
        raise ConfigError(f"finetune.partial_blocks must be >= 0, got {partial_blocks}", hint="e.g. finetune.partial_blocks=1")
    return min(num_blocks, partial_blocks) + 1


def unfrozen_depth(target: int, gradual_unfreeze: int, epoch: int) -> int:
    """Groups trainable in ``epoch`` (0-based): the head first, one more every ``gradual_unfreeze`` epochs."""
    if gradual_unfreeze <= 0:
        return target
    return min(target, 1 + epoch // gradual_unfreeze)


def apply_depth(model: nn.Module, depth: int, *, adapters: bool = False) -> None:
    """Freeze everything, then make the top ``depth`` groups trainable (and adapters, if asked)."""
    set_trainable(model, False)
    for _, module in layer_groups(model)[:depth]:
        set_trainable(module, True)
    if adapters:
        for name, p in model.named_parameters():
            if is_adapter_param(name):
                p.requires_grad_(True)


def param_groups(model: nn.Module, lr: float, depth: int, *, layer_lr_decay: float = 1.0,
                 adapters: bool = False) -> list[dict[str, Any]]:
    """Optimizer groups for the top ``depth`` layer groups, lr * layer_lr_decay**k at depth k.

    Groups hold every parameter that may train during the run, frozen or not yet, so gradual
    unfreezing only flips ``requires_grad`` (the optimizer skips parameters without gradients).
    With ``adapters``, the LoRA parameters form one more group at the full lr and nothing else
    below the head is included.
    """
    if not 0 < layer_lr_decay <= 1:
        raise ConfigError(f"finetune.layer_lr_decay must be in (0, 1], got {layer_lr_decay}",
                          hint="1 keeps one lr for all layers; 0.5 halves it per block going down")
    groups: list[dict[str, Any]] = []
    for k, (name, module) in enumerate(layer_groups(model)[:depth]):
        params = [p for n, p in module.named_parameters() if not is_adapter_param(n)]
        if params:
            groups.append({"params": params, "lr": lr * layer_lr_decay**k, "name": name})
    if adapters:
        lora = [p for n, p in model.named_parameters() if is_adapter_param(n)]
        groups.append({"params": lora, "lr": lr, "name": "lora"})
    return groups


def _hold_statistics(module: nn.Module, _inputs: Any) -> None:
    """Forward pre-hook: a BatchNorm whose parameters are frozen normalises with its running statistics."""
    if not any(p.requires_grad for p in module.parameters()):
        module.training = False


def freeze_norm_statistics(model: nn.Module) -> None:
    """Make frozen BatchNorm layers behave as frozen: no statistics updates, eval-mode normalisation.

    Without this a "frozen" backbone would still drift, since BatchNorm updates its running
    statistics in training mode. Decided per forward pass, so unfreezing a block later works.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and any(True for _ in m.parameters()):
            m.register_forward_pre_hook(_hold_statistics)


def describe_trainable(model: nn.Module) -> dict[str, int]:
    """Parameter counts: ``{"trainable": ..., "total": ...}``."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}
