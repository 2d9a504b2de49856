"""Fine-tuning: adapt a pretrained model to new data, new classes or a person's own images.

- ``strategies``: which weights train (full, head, partial, lora) and at which learning rate;
- ``run``: the end-to-end run (``mnistlab finetune``), imported on use because it sits
  on top of the training code.

The LoRA adapters themselves are model components (``mnistlab.models.lora``): the artifact
loader rebuilds them from a model card without importing anything of fine-tuning.
"""

from mnistlab.finetune.strategies import STRATEGIES
from mnistlab.models.lora import apply_lora, apply_lora_from_card, merge_lora

__all__ = ["STRATEGIES", "apply_lora", "apply_lora_from_card", "merge_lora"]
