"""What a model looks at: attribution maps through Captum, and the pictures that show them.

An attribution map says, for each input pixel, how much it pushed the model towards a class.
Every map here is taken with respect to the pixels scaled to [0, 1] (before the model's
normalisation), so a zero baseline is a blank image, and it has the input's shape [N, C, S, S]:

- ``saliency``: |d logit / d pixel| (Captum ``Saliency``);
- ``integrated-gradients``: the path integral of gradients from a blank image (Captum
  ``IntegratedGradients``; signed, sums to the logit's change from the blank image);
- ``gradcam``: Grad-CAM on the last spatial stage (Captum ``LayerGradCam``) upsampled to the
  input; for a Vision Transformer, the same formula on the last block's patch tokens laid out
  as their grid; models without convolutions or tokens (linear, mlp) have none;
- ``occlusion``: the drop in the logit when a small square of the image is blanked (Captum
  ``Occlusion``; signed, needs no gradients).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.data.imagedata import normalize
from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.evaluate import _pyplot
from mnistlab.fileio import atomic_path

METHODS = ("saliency", "integrated-gradients", "gradcam", "occlusion")
IG_STEPS = 32  # integration steps for integrated gradients (Captum's default is 50)
BATCH = 64  # images per attribution call: bounds memory for integrated gradients and occlusion


def _captum():
    try:
        import captum.attr
    except ImportError:
        raise MnistlabError("explanations need Captum", hint="pip install 'mnistlab[explain]'") from None
    return captum.attr


class _Pixels(nn.Module):
    """Pixels in [0, 1] [N, C, S, S] -> logits: the model with its normalisation (``data.imagedata.normalize``) in front."""

    def __init__(self, model: nn.Module, mean: float, std: float, autocontrast: bool = False) -> None:
        super().__init__()
        self.model, self.mean, self.std, self.autocontrast = model, float(mean), float(std), bool(autocontrast)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(normalize(x, self.mean, self.std, self.autocontrast))


@dataclass
class Explanation:
    """Attribution maps for a batch of images, with what the model predicted for them."""

    method: str
    pixels: np.ndarray  # uint8 [N, C, S, S], the model's input
    attributions: np.ndarray  # float32 [N, C, S, S], same shape as the input
    probabilities: np.ndarray  # float32 [N, classes]
    targets: np.ndarray  # int64 [N], the class each map explains

    def heat(self) -> np.ndarray:
        """Evidence for the target class per pixel, float32 [N, S, S] in [0, 1] (each map over its own maximum)."""
        return heat_maps(self.attributions)


def heat_maps(attributions: np.ndarray) -> np.ndarray:
    """float32 [N, S, S] in [0, 1]: the positive part of each map (channels summed) over its maximum."""
    pos = np.maximum(attributions.sum(axis=1), 0.0)  # [N, C, S, S] -> [N, S, S]
    peak = pos.reshape(len(pos), -1).max(axis=1, initial=0.0)
    return (pos / np.where(peak > 0, peak, 1.0)[:, None, None]).astype(np.float32)


def _spatial_layer(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, str]:
    """The stage Grad-CAM reads: the last one with a spatial map [N, C, h, w] (h, w > 1), or
    the last with a square grid of tokens [N, T, D] (T = h*w, or h*w + 1 with a class token)."""
    stages = model.blocks() if hasattr(model, "blocks") else list(model.children())
    shapes: dict[int, tuple[int, ...]] = {}
    hooks = [s.register_forward_hook(lambda m, i, o, k=k: shapes.__setitem__(k, tuple(o.shape)))
             for k, s in enumerate(stages)]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    for k in sorted(shapes, reverse=True):
        shape = shapes[k]
        if len(shape) == 4 and shape[2] > 1 and shape[3] > 1:
            return stages[k], "map"
        if len(shape) == 3 and any(_is_square(shape[1] - extra) for extra in (0, 1)):
            return stages[k], "tokens"
    name = getattr(model, "arch_name", "") or type(model).__name__
    raise ConfigError(f"gradcam needs convolutions or patch tokens, and model '{name}' has neither",
                      hint="use --method saliency, integrated-gradients or occlusion")


def _is_square(n: int) -> bool:
    return n > 1 and math.isqrt(n) ** 2 == n


def _token_gradcam(net: _Pixels, layer: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM over patch tokens: relu(sum_d mean_t(dy/dA) * A) on the token grid, [N, 1, h, w]."""
    saved: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda m, i, o: saved.append(o))
    try:
        logits = net(x)
    finally:
        hook.remove()
    tokens = saved[0]  # [N, T, D]
    grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), tokens)[0]
    if not _is_square(tokens.shape[1]):  # a leading class token
        tokens, grads = tokens[:, 1:], grads[:, 1:]
    side = math.isqrt(tokens.shape[1])
    cam = F.relu((grads.mean(dim=1, keepdim=True) * tokens).sum(dim=2))  # [N, T]
    return cam.reshape(-1, 1, side, side)  # [N, T] -> [N, 1, h, w]


def _attribute(net: _Pixels, x: torch.Tensor, target: torch.Tensor, method: str) -> torch.Tensor:
    """One batch of attributions, the shape of ``x`` [N, C, S, S]."""
    attr = _captum()
    if method == "saliency":
        return attr.Saliency(net).attribute(x, target=target, abs=True)
    if method == "integrated-gradients":
        return attr.IntegratedGradients(net).attribute(x, baselines=torch.zeros_like(x), target=target,
                                                       n_steps=IG_STEPS, internal_batch_size=BATCH)
    if method == "occlusion":
        c, s = x.shape[1], x.shape[2]
        window = max(2, s // 7)  # 4 px on 28x28: about a stroke's width
        return attr.Occlusion(net).attribute(x, sliding_window_shapes=(c, window, window), baselines=0.0,
                                             strides=(c, max(1, window // 2), max(1, window // 2)),
                                             target=target, perturbations_per_eval=8)
    layer, kind = _spatial_layer(net.model, normalize(x.detach(), net.mean, net.std, net.autocontrast))
    if kind == "tokens":
        cam = _token_gradcam(net, layer, x, target)
    else:
        cam = attr.LayerGradCam(net, layer).attribute(x, target=target, relu_attributions=True)
    cam = F.interpolate(cam.float(), size=x.shape[2:], mode="bilinear", align_corners=False)  # [N, 1, h, w] -> [N, 1, S, S]
    return cam.expand_as(x)


def explain(model: nn.Module, pixels: torch.Tensor, *, mean: float, std: float, method: str = "saliency",
            target: int | None = None, autocontrast: bool = False, temperature: float = 1.0) -> Explanation:
    """Attribution maps for uint8 pixels [N, C, S, S]: for class ``target``, or each image's predicted class.

    ``mean``, ``std`` and ``autocontrast`` are the card's preprocessing; probabilities are
    softmax(logits / ``temperature``), as ``predict`` reports them.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown explanation method '{method}'", hint=f"choose one of {', '.join(METHODS)}")
    was_training = model.training
    net = _Pixels(model.eval(), mean, std, autocontrast)
    x_all = pixels.float() / 255.0
    with torch.no_grad():
        logits = torch.cat([net(x_all[i:i + BATCH]) for i in range(0, len(x_all), BATCH)]).float()
    classes = logits.shape[1]
    if target is not None and not 0 <= target < classes:
        raise ConfigError(f"--target {target} is not a class of this model", hint=f"choose 0 to {classes - 1}")
    targets = logits.argmax(1) if target is None else torch.full((len(x_all),), target, dtype=torch.long)
    parts = []
    try:
        with torch.enable_grad():
            for i in range(0, len(x_all), BATCH):
                x = x_all[i:i + BATCH].clone().requires_grad_(True)
                parts.append(_attribute(net, x, targets[i:i + BATCH], method).detach().float())
    finally:
        model.train(was_training)
    return Explanation(method=method, pixels=pixels.numpy(), attributions=torch.cat(parts).numpy(),
                       probabilities=(logits / temperature).softmax(1).numpy(), targets=targets.numpy())


def top_classes(probabilities: np.ndarray, classes: list[str], k: int = 3) -> list[list[tuple[str, float]]]:
    """For each image, its ``k`` most probable classes as (name, probability), best first."""
    order = np.argsort(-probabilities, axis=1)[:, :k]
    return [[(classes[j], float(p[j])) for j in row] for p, row in zip(probabilities, order, strict=True)]


def _alpha(heat: np.ndarray) -> np.ndarray:
    """Opacity of the heat map: clear where there is no evidence, stronger where there is more."""
    return np.where(heat > 0.02, 0.3 + 0.5 * heat, 0.0)


def _overlay(ax: Any, gray: np.ndarray, heat: np.ndarray) -> None:
    ax.imshow(gray, cmap="gray", vmin=0, vmax=max(1.0, 2.5 * float(gray.max())))  # dimmed, so the colours show
    ax.imshow(heat, cmap="jet", alpha=_alpha(heat), vmin=0, vmax=1, interpolation="bilinear")
    ax.axis("off")


def ink_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the ink in a grayscale image [H, W], either polarity: where the
    preprocessed 28x28 frame came from (the whole image when nothing stands out)."""
    g = image.astype(np.float32)
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    ink = np.abs(g - np.median(border))
    mask = ink > 0.25 * ink.max() if ink.max() > 0 else np.zeros_like(ink, dtype=bool)
    if not mask.any():
        return 0, g.shape[0], 0, g.shape[1]
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def plot_one(pixels: np.ndarray, heat: np.ndarray, top: list[tuple[str, float]], path: Path, *,
             title: str, original: np.ndarray | None = None) -> None:
    """One image's PNG: the 28x28 input, the map over it, and (given) the map over the original image.

    ``pixels`` uint8 [S, S]; ``heat`` [S, S] in [0, 1]; ``original`` grayscale [H, W]. On the
    original, the map covers the ink's bounding box, which is what the preprocessing cropped.
    """
    plt = _pyplot()
    panels = 3 if original is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(2.4 * panels, 2.9))
    axes[0].imshow(pixels, cmap="gray")
    axes[0].axis("off")
    axes[0].set_title("input 28x28" if pixels.shape == (28, 28) else f"input {pixels.shape[0]}x{pixels.shape[1]}",
                      fontsize=8)
    _overlay(axes[1], pixels, heat)
    axes[1].set_title(title, fontsize=8)
    if original is not None:
        top_, bottom, left, right = _content_box(pixels)
        t, b, lft, r = ink_box(original)
        axes[2].imshow(original, cmap="gray")
        crop = heat[top_:bottom, left:right]
        axes[2].imshow(crop, cmap="jet", alpha=_alpha(crop), extent=(lft - 0.5, r - 0.5, b - 0.5, t - 0.5),
                       vmin=0, vmax=1, interpolation="bilinear")
        axes[2].set_xlim(-0.5, original.shape[1] - 0.5)
        axes[2].set_ylim(original.shape[0] - 0.5, -0.5)
        axes[2].set_xticks([])
        axes[2].set_yticks([])
        axes[2].set_title(f"original {original.shape[1]}x{original.shape[0]}", fontsize=8)
    fig.suptitle("   ".join(f"{name} {p:.1%}" for name, p in top), fontsize=9)
    _save(fig, path, dpi=80)


def _content_box(pixels: np.ndarray) -> tuple[int, int, int, int]:
    nz = pixels > 0
    if not nz.any():
        return 0, pixels.shape[0], 0, pixels.shape[1]
    rows, cols = np.flatnonzero(nz.any(axis=1)), np.flatnonzero(nz.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _save(fig: Any, path: Path, dpi: int) -> None:
    """Write a figure as PNG atomically and close it."""
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    _pyplot().close(fig)


def plot_grid(explanation: Explanation, titles: list[str], classes: list[str], path: Path, cols: int = 6,
              target: int | None = None) -> None:
    """All images of ``explanation`` with their maps in one PNG, each titled and labelled with its top class."""
    plt = _pyplot()
    n = len(explanation.pixels)
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.7, rows * 2.0), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    heat = explanation.heat()
    top = top_classes(explanation.probabilities, classes, k=1)
    for i, ax in enumerate(axes.flat[:n]):
        _overlay(ax, explanation.pixels[i, 0], heat[i])
        ax.set_title(f"{titles[i][:14]}\n{top[i][0][0]} {top[i][0][1]:.0%}", fontsize=7)
    what = "each image's predicted class" if target is None else f"class {classes[target]}"
    fig.suptitle(f"{explanation.method}: evidence for {what}", fontsize=9)
    _save(fig, path, dpi=80)


def plot_explained_losses(explanation: Explanation, labels: np.ndarray, classes: list[str], path: Path) -> None:
    """The most confidently wrong images, each beside its map for the predicted class (true -> predicted)."""
    plt = _pyplot()
    n = len(explanation.pixels)
    pairs = 4  # image + map pairs per row
    rows = max(1, math.ceil(n / pairs))
    fig, axes = plt.subplots(rows, 2 * pairs, figsize=(2 * pairs * 1.3, rows * 1.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    heat = explanation.heat()
    for i in range(n):
        a, b = axes.flat[2 * i], axes.flat[2 * i + 1]
        a.imshow(explanation.pixels[i, 0], cmap="gray")
        p = int(explanation.targets[i])
        a.set_title(f"{classes[int(labels[i])]} -> {classes[p]} {explanation.probabilities[i, p]:.2f}", fontsize=7)
        _overlay(b, explanation.pixels[i, 0], heat[i])
        b.set_title(explanation.method, fontsize=7)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center")
    fig.suptitle("top losses with their explanations (true -> predicted, probability; map for the predicted class)",
                 fontsize=8)
    _save(fig, path, dpi=90)


def explain_images(model: nn.Module, *, mean: float, std: float, classes: list[str], names: list[str],
                   pixels: np.ndarray, originals: list[np.ndarray | None], out: Path, method: str = "saliency",
                   target: int | None = None, autocontrast: bool = False,
                   temperature: float = 1.0) -> list[dict[str, Any]]:
    """Explain prepared uint8 pixels [N, S, S] and write ``out/<name>.<method>.png`` for each plus
    ``out/grid.<method>.png``; one record per image (name, png, target, top 3 classes).

    ``originals``: each image's grayscale original [H, W] (or None) to draw the map over too.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    batch = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8))[:, None]  # [N, S, S] -> [N, 1, S, S]
    result = explain(model, batch, mean=mean, std=std, method=method, target=target, autocontrast=autocontrast,
                     temperature=temperature)
    heat, top = result.heat(), top_classes(result.probabilities, classes)
    records, used = [], set()
    for i, name in enumerate(names):
        stem = Path(name).stem or f"image{i}"
        while stem in used:  # two inputs with one file name, from different folders
            stem += "_"
        used.add(stem)
        png = out / f"{stem}.{method}.png"
        t = int(result.targets[i])
        plot_one(result.pixels[i, 0], heat[i], top[i], png, title=f"{method} for {classes[t]}",
                 original=originals[i])
        records.append({"image": name, "png": str(png), "target": classes[t],
                        "top": [{"class": c, "probability": p} for c, p in top[i]]})
    plot_grid(result, [Path(n).name for n in names], classes, out / f"grid.{method}.png", target=target)
    return records


def explain_top_losses(model: nn.Module, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                       classes: list[str], path: Path, *, mean: float, std: float, autocontrast: bool = False,
                       temperature: float = 1.0, n: int = 16, method: str = "integrated-gradients") -> bool:
    """Write the "top losses with their explanations" sheet for uint8 images [N, 1, S, S] and their
    logits; False (nothing written) when Captum is not installed."""
    import importlib.util

    if importlib.util.find_spec("captum") is None:
        return False
    losses = F.cross_entropy(logits.float(), labels.long(), reduction="none")
    wrong = (logits.argmax(1) != labels).nonzero().flatten()
    order = wrong[losses[wrong].argsort(descending=True)][:n]  # the most confidently wrong first
    result = explain(model, images[order], mean=mean, std=std, method=method, autocontrast=autocontrast,
                     temperature=temperature)
    plot_explained_losses(result, labels[order].numpy(), classes, path)
    return True
