"""Compare model variants side by side: prompts x variants x seeds -> one labelled grid and a report.

The reference project compared three models (pretrained, trained from scratch, DreamBooth) on six
fixed prompts; this is that comparison for any variants of the model store:

    python -m training.evaluate --variants demo,demo-finetuned \\
        --prompts data/prompts/demo-showcase.txt --seeds 1,2 --out runs/eval-showcase
    python -m training.evaluate --variants sd21,scratch,dreambooth \\
        --prompts data/prompts/reference-comparison.txt --out runs/eval-reference

and, for the demo model, its accuracy on held-out prompts of the shapes vocabulary (prompts and
seeds disjoint from the training data and from train_scratch's own evaluation), judged from the
pixels by training.shapes.judge:

    python -m training.evaluate --variants demo --shapes 100 --out runs/eval-demo
    python -m training.evaluate --variants demo --shapes 100 --modifiers false --out runs/eval-plain

Each attribute is scored on its own: background and shape colour, shape kind, and size and position
over the prompts that name them; prompts whose colour pair the demo never saw in training get their
own line (`--modifiers false`: prompts of colours and shapes only, the shipped demo's vocabulary).
With more than one variant, each later one also reports how often its shape kind differs
from the first variant's on the same prompt and seed (what a fine-tune changed). A fine-tuned
concept is judged with `--concept`, e.g. whether `demo-finetuned` draws hearts:

    python -m training.evaluate --variants demo-finetuned --shapes 50 --concept "zwx heart" --out runs/eval-heart

Output folder:

    grid.png          rows = prompts, columns = variant x seed, labelled
    images/<variant>/<row>-<seed>.png    every image at its generated size
    report.json       settings, per-image records, per-variant scores, seconds
    report.md         the same as tables, to paste into a README

Prompt files: one prompt per line; blank lines and lines starting with '#' are ignored.

Settings: the `EvaluationConfig` defaults, then a TOML file (`--config`, which may also list the
prompts themselves: `prompts = ["...", "..."]`), then `--key value` flags for any field, as for the
training scripts (training/settings.py).

Images are generated through the bot's own engine (bot.engine), so a variant is evaluated exactly
as `/imagine` would run it: its own defaults (size, steps, guidance, scheduler) unless overridden
here. With `--clip PATH` (a local CLIP model folder, e.g. openai/clip-vit-base-patch32 downloaded on
an online machine) each image also gets a CLIP score: 100 x the cosine similarity of the image
and prompt embeddings, floored at 0, as in torchmetrics' CLIPScore.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from bot.files.atomic import write_atomic, write_text_atomic
from training import shapes
from training.common.run import run_script
from training.settings import Settings, SettingsError

DEVICES = ("auto", "cuda", "mps", "cpu")


class EvaluationError(ValueError):
    """Bad input to the evaluation; the message says what is allowed."""


@dataclass
class EvaluationConfig:
    variants: tuple[str, ...] = ()  # variants of models_dir, left to right in the grid
    prompts: tuple[str, ...] = ()  # the prompts themselves (a TOML list); else prompt_file
    prompt_file: str = ""  # one prompt per line, '#' starts a comment (--prompts FILE)
    shapes: int | None = None  # that many held-out shapes prompts, judged from the pixels (instead of prompts)
    concept: str = ""  # with shapes: "TOKEN SHAPE" (e.g. "zwx heart"): prompts of that concept instead
    modifiers: bool = True  # with shapes: size and place words in most prompts (false: colours and shapes only)
    seeds: tuple[int, ...] = (0,)  # every prompt is drawn with each seed
    models_dir: str = "models"
    out: str = "runs/eval"
    steps: int | None = None  # None: each variant's own default
    guidance: float | None = None
    size: str = ""  # WxH for every variant; empty: each variant's own
    cell: int = 128  # pixels per image in the grid (images are scaled to fit)
    device: str = "auto"  # auto | cuda | mps | cpu
    max_batch: int = 8
    clip: str = ""  # a local CLIP model folder for prompt-image agreement


@dataclass
class GeneratedImage:
    """One generated image."""

    variant: str
    row: int
    prompt: str
    seed: int
    file: str
    judged: dict | None = None  # shapes mode: training.shapes.judge's (or training.concept.judge's) verdict
    clip_score: float | None = None


# --- prompts ---------------------------------------------------------------------------------


def read_prompts(path: str | Path) -> list[str]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise EvaluationError(f"prompt file {path} does not exist") from None
    except UnicodeDecodeError:
        raise EvaluationError(f"prompt file {path} is not UTF-8 text") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise EvaluationError(f"prompt file {path} has no prompts (one per line; '#' starts a comment)")
    return prompts


def plan(settings: EvaluationConfig) -> list[tuple[int, str, shapes.Spec | None, list[int]]]:
    """(row, prompt, spec for the judge or None, seeds) for every row of the grid."""
    if settings.shapes and settings.concept:
        from training.concept import held_out_concept_prompts

        token, shape = settings.concept.split()
        prompts = held_out_concept_prompts(settings.shapes, token, shape, seed=1)
        return [(i, p.prompt, p.spec, [p.seed]) for i, p in enumerate(prompts)]
    if settings.shapes:
        # seed=1: a different held-out set from the one train_scratch scores itself on (seed=0).
        prompts = shapes.held_out_prompts(settings.shapes, seed=1, modifiers=settings.modifiers)
        return [(i, p.prompt, p.spec, [p.seed]) for i, p in enumerate(prompts)]
    prompts = settings.prompts or read_prompts(settings.prompt_file)
    return [(i, prompt, None, list(settings.seeds)) for i, prompt in enumerate(prompts)]


# --- generation ------------------------------------------------------------------------------


def generate_all(settings: EvaluationConfig, rows, log=print) -> tuple[list[GeneratedImage], dict[str, float], dict[str, dict]]:
    """Every image of the comparison, through the engine. Returns records, seconds per variant,
    and the settings each variant ran with."""
    from bot.config import EngineConfig
    from bot.core.request import GenerationRequest
    from bot.engine.engine import Engine
    from bot.models.registry import Registry

    registry = Registry(Path(settings.models_dir))
    registry.scan()
    ready = registry.ready_defaults()
    for name in settings.variants:
        entry = registry.entry(name)
        if entry is None:
            known = ", ".join(e.name for e in registry.entries()) or "none"
            raise EvaluationError(f"there is no model '{name}' in {settings.models_dir} (available: {known})")
        if name not in ready:
            raise EvaluationError(f"model '{name}' cannot be used: {entry.error or 'disabled'}")
    engine = Engine(registry, EngineConfig(device=settings.device, max_batch=max(1, settings.max_batch)),
                    allow_download=False)
    size = parse_size(settings.size) if settings.size else None
    out = Path(settings.out)
    records: list[GeneratedImage] = []
    seconds: dict[str, float] = {}
    used: dict[str, dict] = {}
    for name in settings.variants:
        d = ready[name]
        width, height = size or (d.width, d.height)
        steps, guidance = settings.steps or d.steps, settings.guidance if settings.guidance is not None else d.guidance
        used[name] = {"width": width, "height": height, "steps": steps, "guidance": guidance,
                      "scheduler": d.scheduler, "negative_prompt": d.negative_prompt}
        requests = [GenerationRequest(prompt=prompt, negative_prompt=d.negative_prompt, model=name, seed=seed,
                                      steps=steps, guidance=guidance, width=width, height=height,
                                      scheduler=d.scheduler)
                    for _, prompt, _, seeds in rows for seed in seeds]
        started = time.perf_counter()
        results = generate_with_progress(engine, requests, name)
        seconds[name] = round(time.perf_counter() - started, 2)
        log(f"{name}: {len(results)} images in {seconds[name]:.1f} s")
        folder = out / "images" / name
        folder.mkdir(parents=True, exist_ok=True)
        flat = [(row, prompt, spec, seed) for row, prompt, spec, seeds in rows for seed in seeds]
        for (row, prompt, spec, seed), result in zip(flat, results):
            file = folder / f"{row:03d}-{seed}.png"
            result.images[0].save(file)
            judged = judge(result.images[0], spec) if spec is not None else None
            records.append(GeneratedImage(name, row, prompt, seed, str(file.relative_to(out)), judged))
    return records, seconds, used


def judge(image: Image.Image, spec) -> dict:
    """training.concept.judge for a concept prompt; else training.shapes.judge, plus whether the
    shape looks like a heart (what a fine-tune on hearts may turn other shapes into)."""
    from training import concept

    if isinstance(spec, concept.ConceptSpec):
        return concept.judge(image, spec)
    return shapes.judge(image, spec) | {"heart": concept.is_heart(image)}


def drawn_kind(judged: dict) -> str | None:
    """The shape kind drawn, 'heart' included."""
    return "heart" if judged.get("heart") else judged.get("shape_kind")


def generate_with_progress(engine, requests: list, name: str) -> list:
    """engine.generate in the engine's batches, with a progress bar on a terminal once it takes
    more than two seconds (the images are the same in any batching: one seed per image)."""
    from tqdm import tqdm

    results: list = []
    size = engine.config.max_batch
    with tqdm(total=len(requests), desc=name, unit="image", delay=2, disable=not sys.stderr.isatty()) as bar:
        for start in range(0, len(requests), size):
            results += engine.generate(requests[start:start + size])
            bar.update(len(requests[start:start + size]))
    return results


def add_clip_scores(records: Sequence[GeneratedImage], out: Path, model_dir: str) -> None:
    """CLIP score of every record (100 x cosine similarity, floored at 0)."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    if not Path(model_dir).is_dir():
        raise EvaluationError(f"--clip {model_dir}: not a folder. Download a CLIP model on an online machine "
                              "(e.g. openai/clip-vit-base-patch32) and give its folder")
    try:
        model = CLIPModel.from_pretrained(model_dir, local_files_only=True).eval()
        processor = CLIPProcessor.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as error:
        raise EvaluationError(f"--clip {model_dir}: not a CLIP model folder ({error})") from None
    with torch.inference_mode():
        for record in records:
            image = Image.open(out / record.file).convert("RGB")
            inputs = processor(text=[record.prompt], images=[image], return_tensors="pt", padding=True,
                               truncation=True)
            image_features = model.get_image_features(pixel_values=inputs["pixel_values"])
            text_features = model.get_text_features(input_ids=inputs["input_ids"],
                                                    attention_mask=inputs["attention_mask"])
            image_features = _features(image_features)
            text_features = _features(text_features)
            cosine = torch.nn.functional.cosine_similarity(image_features, text_features).item()
            record.clip_score = round(max(cosine, 0.0) * 100, 2)


def _features(output):
    """get_*_features returns a tensor in older transformers, an output object in newer ones."""
    return output if hasattr(output, "dim") else output.pooler_output


# --- scores and the grid ---------------------------------------------------------------------


def scores(records: Sequence[GeneratedImage], variants: Sequence[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    first_kinds = {(r.row, r.seed): drawn_kind(r.judged) for r in records
                   if variants and r.variant == variants[0] and r.judged is not None}
    for name in variants:
        mine = [r for r in records if r.variant == name]
        entry: dict = {"images": len(mine)}
        judged = [r.judged for r in mine if r.judged is not None]
        if judged:
            entry.update({k: round(v, 4) for k, v in shapes.score(judged).items()})
        if name != variants[0] and first_kinds and any("shape_kind_ok" in r.judged for r in mine if r.judged):
            # What a fine-tune changed: the same prompt and seed, another shape kind (a heart
            # included) than the first variant's.
            pairs = [(first_kinds[(r.row, r.seed)], drawn_kind(r.judged)) for r in mine
                     if r.judged is not None and (r.row, r.seed) in first_kinds]
            entry["shape_kind_changed"] = round(sum(a != b for a, b in pairs) / len(pairs), 4)
        clipped = [r.clip_score for r in mine if r.clip_score is not None]
        if clipped:
            entry["clip_score"] = round(sum(clipped) / len(clipped), 2)
        out[name] = entry
    return out


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, OSError):
        return ImageFont.load_default()


@dataclass(frozen=True)
class Layout:
    """Where everything is in the grid, so readers (and tests) can find a cell or a label."""

    label_width: int
    header_height: int
    cell: int
    columns: list[tuple[str, int]]  # (variant, seed) per column, left to right
    rows: list[str]  # prompts, top to bottom

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        left = self.label_width + column * self.cell
        top = self.header_height + row * self.cell
        return left, top, left + self.cell, top + self.cell


def build_grid(records: Sequence[GeneratedImage], out: Path, variants: Sequence[str], cell: int) -> tuple[Image.Image, Layout]:
    rows = sorted({(r.row, r.prompt) for r in records})
    seeds_by_variant = {name: sorted({r.seed for r in records if r.variant == name}) for name in variants}
    # Shapes mode gives every row its own seed; columns are then one per variant.
    per_row_seeds = all(len({r.seed for r in records if r.variant == name and r.row == row}) == 1
                        for name in variants for row, _ in rows) and len(rows) > 1
    if per_row_seeds:
        columns = [(name, -1) for name in variants]
    else:
        columns = [(name, seed) for name in variants for seed in seeds_by_variant[name]]
    font = _font(max(10, cell // 10))
    line_height = getattr(font, "size", 11) + 2  # the bitmap fallback font is about 11 px
    label_chars = 28
    label_width = int(font.getlength("x" * label_chars)) + 16
    header_height = 2 * (line_height + 2) + 8
    layout = Layout(label_width, header_height, cell, columns, [prompt for _, prompt in rows])
    grid = Image.new("RGB", (label_width + cell * len(columns), header_height + cell * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    by_key = {(r.variant, r.row, r.seed): r for r in records}
    by_row = {(r.variant, r.row): r for r in records}
    for column, (name, seed) in enumerate(columns):
        left = label_width + column * cell
        draw.text((left + 4, 4), name, fill="black", font=font)
        if seed >= 0:
            draw.text((left + 4, 4 + line_height + 2), f"seed {seed}", fill=(90, 90, 90), font=font)
        for row_index, (row, prompt) in enumerate(rows):
            record = by_row[(name, row)] if seed < 0 else by_key.get((name, row, seed))
            if record is None:
                continue
            image = Image.open(out / record.file).convert("RGB")
            # Small images are scaled up without smoothing so their pixels stay honest.
            resample = Image.NEAREST if image.width <= cell else Image.LANCZOS
            scale = min(cell / image.width, cell / image.height)
            shown = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
            box = layout.cell_box(row_index, column)
            grid.paste(shown, (box[0] + (cell - shown.width) // 2, box[1] + (cell - shown.height) // 2))
    for row_index, (_, prompt) in enumerate(rows):
        top = header_height + row_index * cell
        lines = textwrap.wrap(prompt, label_chars)
        max_lines = max(1, (cell - 8) // line_height)
        if len(lines) > max_lines:
            lines = lines[:max_lines]
            lines[-1] = lines[-1][: label_chars - 1] + "…"
        draw.multiline_text((8, top + 4), "\n".join(lines), fill="black", font=font, spacing=2)
    return grid, layout


# --- reports ---------------------------------------------------------------------------------


def markdown_report(settings: EvaluationConfig, used: dict, by_variant: dict, seconds: dict, records: Sequence[GeneratedImage]) -> str:
    lines = ["# Evaluation", ""]
    if settings.shapes:
        lines += [f"{settings.shapes} held-out prompts of the shapes vocabulary, one image each, judged from the "
                  "pixels (training/shapes.py).", ""]
    else:
        source = settings.prompt_file or "given prompts"
        lines += [f"Prompts: {source}; seeds {', '.join(map(str, settings.seeds))}.", ""]
    header = "| variant | size | steps | guidance | images | seconds |"
    keys = [k for k in ("background_ok", "shape_colour_ok", "colours_ok", "shape_kind_ok", "size_ok", "position_ok",
                        "concept_ok", "shape_kind_changed", "clip_score")
            if any(k in v for v in by_variant.values())]
    first = settings.variants[0] if settings.variants else ""
    titles = {"background_ok": "background", "shape_colour_ok": "shape colour", "shape_kind_ok": "shape kind",
              "colours_ok": "both colours", "size_ok": "size", "position_ok": "position",
              "concept_ok": settings.concept or "concept", "shape_kind_changed": f"kind changed vs {first}",
              "clip_score": "CLIP score"}
    header += "".join(f" {titles[k]} |" for k in keys)
    lines += [header, "|" + "---|" * (6 + len(keys))]
    for name, entry in by_variant.items():
        u = used[name]
        cells = [name, f"{u['width']}x{u['height']}", str(u["steps"]), f"{u['guidance']:g}", str(entry["images"]),
                 f"{seconds[name]:.1f}"]
        for k in keys:
            value = entry.get(k)
            cells.append("-" if value is None else (f"{value:.1f}" if k == "clip_score" else f"{value:.0%}"))
        lines.append("| " + " | ".join(cells) + " |")
    if any("n_size_ok" in v or "n_position_ok" in v for v in by_variant.values()):
        lines += ["", "Size and position are scored over the prompts that name them "
                  f"({', '.join(f'{k[2:-3]} {v[k]}' for v in list(by_variant.values())[:1] for k in ('n_size_ok', 'n_position_ok') if k in v)})."]
    for name, entry in by_variant.items():
        if "held_out_colours_ok" in entry:
            lines += ["", f"Held-out colour pairs ({name}): both colours right in {entry['held_out_colours_ok']:.0%} "
                      f"of {entry['n_held_out_colours_ok']} prompts whose colour pair was never in training."]
    if not settings.shapes:
        lines += ["", "Prompts (grid rows, top to bottom):", ""]
        lines += [f"{i + 1}. {prompt}" for i, prompt in enumerate(dict.fromkeys(r.prompt for r in records))]
    return "\n".join(lines) + "\n"


def evaluate(settings: EvaluationConfig, log=print) -> dict:
    """Run the comparison and write grid.png, report.json and report.md into settings.out."""
    problem = check_config(settings)
    if problem:
        raise EvaluationError(problem)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = plan(settings)
    records, seconds, used = generate_all(settings, rows, log)
    if settings.clip:
        add_clip_scores(records, out, settings.clip)
    by_variant = scores(records, settings.variants)
    grid, layout = build_grid(records, out, settings.variants, settings.cell)
    write_atomic(out / "grid.png", lambda f: grid.save(f, format="PNG"), binary=True)
    report = {
        "settings": asdict(settings),
        "variants": used,
        "scores": by_variant,
        "seconds": seconds,
        "grid": {"file": "grid.png", "label_width": layout.label_width, "header_height": layout.header_height,
                 "cell": layout.cell, "columns": [{"variant": v, "seed": s if s >= 0 else None}
                                                  for v, s in layout.columns],
                 "rows": layout.rows},
        "images": [asdict(r) for r in records],
    }
    write_text_atomic(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(out / "report.md", markdown_report(settings, used, by_variant, seconds, records))
    for name, entry in by_variant.items():
        log(f"{name}: " + ", ".join(f"{k} {v}" for k, v in entry.items()))
    log(f"wrote {out / 'grid.png'}, {out / 'report.json'}, {out / 'report.md'}")
    return report


# --- command line ----------------------------------------------------------------------------

SETTINGS = Settings(EvaluationConfig, what="evaluation", hidden=("prompts", "prompt_file"), resumable=False)


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise EvaluationError(f"--size must look like 64x64, got {text!r}") from None
    if width < 8 or height < 8 or width % 8 or height % 8:
        raise EvaluationError(f"--size sides must be multiples of 8 and at least 8, got {text!r}")
    return width, height


def check_config(c: EvaluationConfig) -> str | None:
    """What is wrong with the settings themselves (no files are looked at), or None."""
    if not c.variants:
        return "give at least one variant (--variants demo,demo-finetuned)"
    if c.shapes is not None and (c.prompts or c.prompt_file):
        return "give --prompts FILE or --shapes N, not both"
    if c.shapes is None and not c.prompts and not c.prompt_file:
        return "give --prompts FILE or --shapes N"
    if c.shapes is not None and c.shapes < 1:
        return f"--shapes must be at least 1, got {c.shapes}"
    if c.concept:
        from training.concept import JUDGED_SHAPES

        words = c.concept.split()
        if c.shapes is None:
            return "--concept needs --shapes N (how many prompts of the concept to judge)"
        if len(words) != 2 or not words[0].isalnum() or words[1] not in JUDGED_SHAPES:
            return (f"--concept must be a token and a shape, the shape one of {', '.join(JUDGED_SHAPES)} "
                    f"(e.g. \"zwx heart\"), got {c.concept!r}")
    if not c.seeds:
        return "give at least one seed (--seeds 0,1)"
    if c.steps is not None and c.steps < 1:
        return f"--steps must be at least 1, got {c.steps}"
    if c.cell < 16:
        return f"--cell must be at least 16 pixels, got {c.cell}"
    if c.device not in DEVICES:
        return f"device must be one of {', '.join(DEVICES)}, got {c.device!r}"
    if c.size:
        try:
            parse_size(c.size)
        except EvaluationError as error:
            return str(error)
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = SETTINGS.parser(
        prog="imagebot train evaluate", description=__doc__,
        epilog="Every setting of EvaluationConfig is also a flag: --variants a,b, --seeds 0,1, --size 64x64, ...",
    )
    parser.add_argument("--prompts", dest="prompt_file", metavar="FILE", help="prompt file, one prompt per line")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> EvaluationConfig:
    """The evaluation's settings; EvaluationError for bad ones (argparse itself exits 2 on unknown flags)."""
    try:
        config, _ = SETTINGS.parse(build_parser().parse_args(argv), check_config)
    except SettingsError as error:
        raise EvaluationError(str(error)) from None
    return config


def main(argv: Sequence[str] | None = None) -> int:
    return run_script("evaluate", EvaluationError, lambda: evaluate(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
