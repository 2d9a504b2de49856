"""Fine-tuning: adapt a pretrained model to new data, new classes or a person's own images.

- ``lora``: low-rank adapters as wrapper modules, merged back into plain weights on demand;
- ``strategies``: which weights train (full, head, partial, lora) and at which learning rate;
- ``finetune``: the end-to-end run (``mnistlab finetune``), imported on use because it sits
  on top of the training code, while the artifact loader needs ``lora`` alone.
"""

from mnistlab.finetune.lora import apply_lora, apply_lora_from_card, merge_lora
from mnistlab.finetune.strategies import STRATEGIES

__all__ = ["STRATEGIES", "apply_lora", "apply_lora_from_card", "merge_lora"]
