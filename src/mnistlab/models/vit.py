"""A Vision Transformer (Dosovitskiy et al., 2021) sized for 28x28 images.

    patches (Conv2d, kernel = stride = patch_size) + learned positions [+ cls token]
    -> ``depth`` pre-norm blocks: x + attn(norm(x)), x + mlp(norm(x))
    -> final norm (inside the last block) -> cls token or mean over patches -> head

Default: 4x4 patches, so 28x28 gives 7x7 = 49 tokens (+1 cls); dim 64, depth 4, 4 heads (~0.2M).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.models.base import Classifier, require
from mnistlab.models.registry import register_model


class Attention(nn.Module):
    """Multi-head self-attention: one qkv projection, ``scaled_dot_product_attention``, an output projection."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads)  # [B, N, 3, H, D/H]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, N, D/H]
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B, N, D)  # [B, H, N, D/H] -> [B, N, D]
        return self.proj_drop(self.proj(out))


class Block(nn.Module):
    """A pre-norm transformer block; the last one of the stack also applies the final LayerNorm."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, dropout: float, final_norm: bool = False
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )
        # Kept inside the last block so that "train the last block" includes the norm the head reads.
        self.final_norm = nn.LayerNorm(dim) if final_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.final_norm(x)


class PatchEmbed(nn.Module):
    """``[B, C, S, S]`` -> ``[B, T, dim]`` tokens: patches, optional cls token, learned positions."""

    def __init__(
        self, in_channels: int, dim: int, patch_size: int, num_patches: int, cls_token: bool, dropout: float
    ):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + int(cls_token), dim))
        self.drop = nn.Dropout(dropout)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)  # [B, dim, h, w] -> [B, h*w, dim]
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # [B, 1 + h*w, dim]
        return self.drop(x + self.pos_embed)


class TokenPool(nn.Module):
    """``[B, T, dim]`` -> ``[B, dim]``: the cls token, or the mean over tokens."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] if self.mode == "cls" else x.mean(dim=1)


@register_model("vit", "Vision Transformer: 4x4 patches, dim 64, depth 4, 4 heads (~0.2M params)")
def vit(
    *,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
    patch_size: int = 4,
    dim: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 4.0,
    dropout: float = 0.0,
    pool: Literal["cls", "mean"] = "cls",
) -> Classifier:
    """ViT; ``dropout`` applies to embeddings, attention weights, projections, MLPs and before the head."""
    require(
        patch_size >= 1 and image_size >= patch_size and image_size % patch_size == 0,
        f"image_size {image_size} is not divisible by patch_size {patch_size}",
        "choose a patch_size that divides it, e.g. 4 or 7 for 28x28",
    )
    require(
        min(dim, depth, heads) >= 1, "dim, depth and heads must be positive", "e.g. dim=64 depth=4 heads=4"
    )
    require(dim % heads == 0, f"dim {dim} is not divisible by heads {heads}", "e.g. dim=64 heads=4")
    require(int(dim * mlp_ratio) >= 1, f"mlp_ratio must be positive, got {mlp_ratio}", "e.g. mlp_ratio=4")
    require(0.0 <= dropout < 1.0, f"dropout must be in [0, 1), got {dropout}", "e.g. dropout=0.1")
    num_patches = (image_size // patch_size) ** 2
    body: dict[str, nn.Module] = {
        "embed": PatchEmbed(in_channels, dim, patch_size, num_patches, pool == "cls", dropout)
    }
    for i in range(depth):
        body[f"block{i + 1}"] = Block(dim, heads, mlp_ratio, dropout, final_norm=i == depth - 1)
    model = Classifier(body, dim, num_classes, pool=TokenPool(pool), dropout=dropout)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return model


@register_model("vit-small", "ViT preset: dim 384, depth 6, 6 heads (~10.7M params)")
def vit_small(
    *,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
    patch_size: int = 4,
    dropout: float = 0.0,
) -> Classifier:
    """``vit`` with ``dim=384, depth=6, heads=6``: the large-model regime at MNIST size."""
    return vit(
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=image_size,
        patch_size=patch_size,
        dim=384,
        depth=6,
        heads=6,
        dropout=dropout,
    )
