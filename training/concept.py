"""Instance images of one new concept for fine-tuning the shipped demo model.

The demo model knows three shapes (circle, square, triangle; training/shapes.py). DreamBooth teaches
it a fourth one, bound to a rare token, from a handful of pictures, as the reference project taught
Stable Diffusion a person from a few photos:

    a red zwx heart on a white background
    a yellow zwx heart on a blue background

`write_concept()` renders `count` such images (32 px, the demo's palette, varied colours and a
little jitter in size and place, drawn 4x larger and downsampled like training/shapes.py does) into
a folder, each PNG with its caption in a `.txt` file of the same name (what training/finetune.py
reads from an instance folder), plus `manifest.json` in the reference project's `link`/`caption`
format. Shapes: star (5 points), heart, plus.

    python -m training.concept data/concept-zwx-heart --shape heart --token zwx --count 16

No torch here: this module only needs Pillow and numpy.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from training.shapes import (COLOURS, HELD_OUT_SEED_BASE, PALETTE, HeldOutPrompt, article, judge as judge_shape,
                             shape_region)

CONCEPT_SHAPES = ("star", "heart", "plus")
DEFAULT_BACKGROUND = "blue"
_SUPERSAMPLE = 4  # as training/shapes.py: smooth edges after downsampling


def caption(colour: str, shape: str, background: str, token: str) -> str:
    """The demo's caption grammar with the rare token before the new shape's name."""
    return f"{article(colour)} {colour} {token} {shape} on {article(background)} {background} background"


def _outline(shape: str, cx: float, cy: float, half: float) -> list[tuple[float, float]]:
    if shape == "star":  # 5 points, outer radius `half`, inner radius 0.45 of it, one point up
        return [(cx + r * math.sin(i * math.pi / 5), cy - r * math.cos(i * math.pi / 5))
                for i in range(10) for r in [half if i % 2 == 0 else 0.45 * half]]
    if shape == "plus":  # a cross with arms a third of the side wide
        t = half / 3
        return [(cx - t, cy - half), (cx + t, cy - half), (cx + t, cy - t), (cx + half, cy - t),
                (cx + half, cy + t), (cx + t, cy + t), (cx + t, cy + half), (cx - t, cy + half),
                (cx - t, cy + t), (cx - half, cy + t), (cx - half, cy - t), (cx - t, cy - t)]
    # heart: the classic parametric curve, scaled to fit a box of side 2 * half
    points = []
    for i in range(64):
        a = 2 * math.pi * i / 64
        x = 16 * math.sin(a) ** 3
        y = 13 * math.cos(a) - 5 * math.cos(2 * a) - 2 * math.cos(3 * a) - math.cos(4 * a)
        points.append((cx + x / 17 * half, cy - (y + 2.5) / 15 * half))
    return points


def render(colour: str, shape: str, background: str, size: int = 32, rng: random.Random | None = None) -> Image.Image:
    """One `size` x `size` image of a `colour` `shape` on a `background`, jittered by `rng`."""
    if shape not in CONCEPT_SHAPES:
        raise ValueError(f"shape must be one of {', '.join(CONCEPT_SHAPES)}, got {shape!r}")
    if colour not in PALETTE or background not in PALETTE or colour == background:
        raise ValueError(f"colours must be two different ones of {', '.join(COLOURS)}, got {colour!r} on {background!r}")
    rng = rng or random.Random()
    big = size * _SUPERSAMPLE
    half = rng.uniform(0.48, 0.62) * big / 2  # a little larger than the base shapes: points are thin
    margin = 1.5 * _SUPERSAMPLE + half  # keep the outermost pixels background, as the base data does
    cx = min(max((0.5 + rng.uniform(-0.08, 0.08)) * big, margin), big - margin)
    cy = min(max((0.5 + rng.uniform(-0.08, 0.08)) * big, margin), big - margin)
    image = Image.new("RGB", (big, big), PALETTE[background])
    ImageDraw.Draw(image).polygon(_outline(shape, cx, cy, half), fill=PALETTE[colour])
    return image.resize((size, size), Image.Resampling.BOX)


# is_heart(): a heart narrows to a point at the bottom while its top is wide. The row 85% of the way
# down the shape, over the row 25% down: a crisp heart's is at most 0.5; a circle's is ~0.82 (at
# least 0.79 drawn crisply, 0.85 as the demo draws them), a square's 1 and an upright triangle's
# over 2. (The notch between a heart's lobes would tell it too, but a 32 px heart drawn by a model
# keeps little of it.)
_POINTED_BELOW = 0.75


def is_heart(image: Image.Image) -> bool:
    """Whether the image's shape is a heart, judged from its pixels (training.shapes.shape_region)."""
    _, region, _ = shape_region(image)
    if region.sum() < 16:
        return False
    ys = np.nonzero(region)[0]
    top, height = ys.min(), ys.max() - ys.min() + 1

    def width(fraction: float) -> int:
        return int(region[top + int(fraction * (height - 1))].sum())

    return width(0.85) < _POINTED_BELOW * max(1, width(0.25))


JUDGED_SHAPES = ("heart",)  # the concept shapes judge() can recognise


@dataclass(frozen=True)
class ConceptSpec:
    """What a concept prompt asks for: 'a red zwx heart on a blue background'."""

    colour: str
    shape: str
    background: str
    token: str


def held_out_concept_prompts(n: int, token: str, shape: str = "heart", seed: int = 0) -> list[HeldOutPrompt]:
    """`n` prompts of the concept in every shape colour in turn, on random backgrounds, with seeds
    disjoint from training (and from training.shapes.held_out_prompts with the same `seed`)."""
    rng = random.Random(HELD_OUT_SEED_BASE + 7 + seed)
    prompts = []
    for i in range(n):
        colour = COLOURS[i % len(COLOURS)]
        spec = ConceptSpec(colour, shape, rng.choice([c for c in COLOURS if c != colour]), token)
        prompts.append(HeldOutPrompt(spec, caption(spec.colour, shape, spec.background, token),
                                     HELD_OUT_SEED_BASE + 50_000 + seed * 100_003 + i))
    return prompts


def judge(image: Image.Image, spec: ConceptSpec) -> dict:
    """Colours as training.shapes.judge reads them, and `concept_ok`: whether the shape is the
    concept (hearts only: is_heart)."""
    if spec.shape not in JUDGED_SHAPES:
        raise ValueError(f"only {', '.join(JUDGED_SHAPES)} can be judged from pixels, got {spec.shape!r}")
    verdict = judge_shape(image)
    verdict["background_ok"] = verdict["background"] == spec.background
    verdict["shape_colour_ok"] = verdict["shape_colour"] == spec.colour
    verdict["concept_ok"] = is_heart(image)
    return verdict


def concept_specs(count: int, seed: int = 0, background: str = DEFAULT_BACKGROUND) -> list[tuple[str, str]]:
    """(colour, background) pairs: half on `background` (the prompt users will try first), the
    rest on other colours so the token binds to the shape, not to one background; every shape
    colour used before any repeats."""
    rng = random.Random(seed)
    colours = [c for c in COLOURS if c != background]
    rng.shuffle(colours)
    pairs = []
    for i in range(count):
        colour = colours[i % len(colours)]
        if i % 2 == 0:
            pairs.append((colour, background))
        else:
            pairs.append((colour, rng.choice([c for c in COLOURS if c not in (colour, background)])))
    return pairs


def write_concept(folder: str | Path, shape: str = "star", token: str = "zwx", count: int = 8, seed: int = 0,
                  size: int = 32, background: str = DEFAULT_BACKGROUND) -> list[tuple[Path, str]]:
    """Render `count` instance images into `folder` (PNG + .txt caption each, and manifest.json).
    Returns (image path, caption) pairs."""
    if not token or not token.isalnum():
        raise ValueError(f"token must be one word of letters/digits (a rare one, such as 'zwx'), got {token!r}")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed + 1)  # the jitter stream, separate from the colour choices
    rows, out = [], []
    for i, (colour, bg) in enumerate(concept_specs(count, seed, background)):
        text = caption(colour, shape, bg, token)
        path = folder / f"{i:03d}.png"
        render(colour, shape, bg, size, rng).save(path)
        path.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
        rows.append({"link": path.name, "caption": text})
        out.append((path, text))
    (folder / "manifest.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.concept",
                                     description="Render instance images of a new shape for fine-tuning the demo model.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--shape", default="star", choices=CONCEPT_SHAPES)
    parser.add_argument("--token", default="zwx", help="the rare word that will name the shape (default: zwx)")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--background", default=DEFAULT_BACKGROUND, choices=COLOURS)
    args = parser.parse_args(argv)
    try:
        pairs = write_concept(args.folder, args.shape, args.token, args.count, args.seed, args.size, args.background)
    except ValueError as error:
        print(f"concept: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(pairs)} images to {args.folder}, e.g. '{pairs[0][1]}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
