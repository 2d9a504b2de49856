"""A proxy for digits written by people who are not in MNIST: digits rendered from the system's
fonts (DejaVu and Liberation, every weight and style in /usr/share/fonts/truetype), made to look
scanned: glyph height 14-120 px in a larger page, a small rotation, a horizontal stretch of
0.8-1.25, a Gaussian blur of sigma 0-1.5 px (scaled with the glyph), dark ink (grey 0-90) on grey
paper (150-245) with a brightness gradient and Gaussian noise (sigma 2-10), off-centre.

These are typefaces, not handwriting: a proxy for "other writers and scanners", never the target,
and never a reason to give up MNIST test accuracy.

    python benchmarks/proxy_digits.py build /tmp/proxy --per-font 6     # proxy/train (shots) and proxy/test
    mnistlab eval RUN --dataset folder:/tmp/proxy/test --json           # zero-shot on the plain tree
    mnistlab finetune RUN --dataset folder:/tmp/proxy --shots 10        # 10 per class, default settings

The train/ folder holds 10 images per class (from all fonts, seeded); test/ holds the rest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIRS = [Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation")]


def fonts() -> list[Path]:
    """Every text font of the families above (the math font left out)."""
    return sorted(p for d in FONT_DIRS if d.is_dir() for p in d.glob("*.ttf") if "Math" not in p.name)


def render_digit(font: Path, digit: str, rng: np.random.Generator) -> Image.Image:
    """One digit from ``font`` as a scan-like grayscale image."""
    px = int(rng.choice([14, 20, 28, 40, 64, 120]))
    f = ImageFont.truetype(str(font), size=int(px * 1.35))
    glyph = Image.new("L", (px * 3, px * 3), 0)
    ImageDraw.Draw(glyph).text((px, px // 2), digit, fill=255, font=f)
    glyph = glyph.crop(glyph.getbbox())
    stretch = rng.uniform(0.8, 1.25)
    glyph = glyph.resize((max(1, round(glyph.width * stretch)), glyph.height), Image.BILINEAR)
    glyph = glyph.rotate(rng.uniform(-8, 8), resample=Image.BILINEAR, expand=True)
    w, h = glyph.width + int(px * rng.uniform(0.4, 1.6)), glyph.height + int(px * rng.uniform(0.4, 1.6))
    page = Image.new("L", (w, h), 0)
    page.paste(glyph, (int(rng.integers(0, w - glyph.width + 1)), int(rng.integers(0, h - glyph.height + 1))))
    sigma = rng.uniform(0, 1.5) * px / 28
    if sigma > 0.2:
        page = page.filter(ImageFilter.GaussianBlur(sigma))
    ink = np.asarray(page, dtype=np.float32) / 255.0
    paper = rng.uniform(150, 245) + rng.uniform(-25, 0) * np.linspace(0, 1, w)[None, :]
    level = rng.uniform(0, 90)
    out = paper - ink * (paper - level) + rng.normal(0, rng.uniform(2, 10), ink.shape)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), mode="L")


def save(image: Image.Image, root: Path, split: str, digit: str, name: str) -> None:
    """Write ``image`` as root/<split>/<digit>/<name>.png, atomically (a proxy's folder tree)."""
    from mnistlab.fileio import atomic_path

    folder = root / split / digit
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / f"{name}.png") as tmp:
        image.save(tmp, format="PNG")


def build_parser(doc: str | None) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command line of a proxy script: the parser and its ``build ROOT [--shots K] [--seed S]`` command."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the proxy folder tree")
    b.add_argument("root", type=Path)
    b.add_argument("--shots", type=int, default=10, help="images per class in train/")
    b.add_argument("--seed", type=int, default=0)
    return p, b


def build(root: Path, per_font: int, shots: int, seed: int) -> tuple[int, int]:
    """Write root/train/<digit>/ (``shots`` per class) and root/test/<digit>/ (the rest)."""
    rng = np.random.default_rng(seed)
    counts = [0, 0]
    for digit in "0123456789":
        items = [(font, k) for font in fonts() for k in range(per_font)]
        chosen = set(rng.choice(len(items), size=shots, replace=False).tolist())
        for i, (font, k) in enumerate(items):
            split = "train" if i in chosen else "test"
            save(render_digit(font, digit, rng), root, split, digit, f"{font.stem}-{k}")
            counts[split == "test"] += 1
    return counts[0], counts[1]


def main(argv: list[str] | None = None) -> int:
    p, b = build_parser(__doc__)
    b.add_argument("--per-font", type=int, default=6, help="images per font and digit")
    args = p.parse_args(argv)
    n_train, n_test = build(args.root, args.per_font, args.shots, args.seed)
    print(f"{args.root}: {len(fonts())} fonts, train/ {n_train} images, test/ {n_test} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
