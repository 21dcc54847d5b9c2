"""Caption the images of a manifest or a folder with an image-captioning model (BLIP and friends).

    imagebot data caption data/vietnam/manifest.json --model models/blip-base --template "{category}, {caption}"
    imagebot data caption --folder data/vietnam --model models/blip-base -o data/vietnam/captions.json

The reference project captioned its crawled images with an image-captioning model to get the
`caption` of each `link`; this does the same with the bot's captioner (bot.engine.captioner, which
/describe uses too): any model that transformers loads as `AutoModelForImageTextToText` with an
`AutoProcessor` (BLIP: Salesforce/blip-image-captioning-base or -large; GIT and ViT-GPT2 style
models load the same way). The model is read from a local folder only, never downloaded: fetch it
once on a machine with internet access, e.g.

    huggingface-cli download Salesforce/blip-image-captioning-base --local-dir models/blip-base

Only records with an empty caption are captioned, unless `--overwrite`; so a run that stopped can
be started again, and after `imagebot data crawl --caption-template ""` adds images, only the new
ones are captioned. The manifest is written atomically after every batch. `--template` shapes the
final caption from the model's text: fields {caption}, {category} (the record's category or its
folder) and {file} (the image's file name without extension).

With `--folder DIR` the images are those of DIR/<category>/ (training.manifest.from_folders; a
sidecar `<image>.txt` counts as the image's caption), added to the output manifest (default
DIR/manifest.json) when it exists.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PIL import Image, ImageOps

from bot.engine.captioner import EXAMPLE_MODEL, CaptionError, Captioner
from training.manifest import (
    FORMATS,
    ManifestError,
    Record,
    check_template,
    from_folders,
    read_manifest,
    write_manifest,
)

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{caption}"
TEMPLATE_FIELDS = ("caption", "category", "file")


def open_image(path: Path) -> Image.Image:
    """The image as RGB, turned upright by its EXIF orientation, as a person sees it."""
    with Image.open(path) as image:
        image.load()
        return ImageOps.exif_transpose(image).convert("RGB")


@dataclass
class CaptionStats:
    captioned: int = 0
    kept: int = 0  # already had a caption
    unreadable: int = 0
    remote: int = 0  # links that are URLs, not files


def caption_records(records: list[Record], captioner: Any, *, overwrite: bool = False, batch_size: int = 8,
                    template: str = DEFAULT_TEMPLATE, after_batch: Callable[[int, int], None] | None = None) -> CaptionStats:
    """Fills the captions of `records` in place. `captioner` has `caption(images) -> texts`.
    `after_batch(done, total)` runs after every batch (the command writes the manifest there)."""
    stats = CaptionStats()
    todo = []
    for record in records:
        if record.path is None:
            stats.remote += 1
        elif record.caption and not overwrite:
            stats.kept += 1
        else:
            todo.append(record)
    for start in range(0, len(todo), batch_size):
        batch, images = [], []
        for record in todo[start:start + batch_size]:
            try:
                images.append(open_image(record.path))
                batch.append(record)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                log.warning("%s: cannot read the image (%s); its caption is left as it was", record.link, exc)
                stats.unreadable += 1
        if batch:
            for record, text in zip(batch, captioner.caption(images)):
                record.caption = template.format(caption=text, category=record.category,
                                                 file=Path(record.link).stem).strip()
                stats.captioned += 1
        if after_batch:
            after_batch(min(start + batch_size, len(todo)), len(todo))
    return stats


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "caption", help="write captions with a local image-captioning model (BLIP)",
        description="Caption the images of MANIFEST (or of DIR/<category>/ with --folder) with a local "
                    "image-captioning model. Only empty captions are filled unless --overwrite. The "
                    "manifest is written after every batch.")
    p.add_argument("manifest", nargs="?", metavar="MANIFEST", help="manifest to caption (.json, .jsonl, .csv, .txt)")
    p.add_argument("--folder", metavar="DIR", help="caption the images of DIR/<category>/ instead")
    p.add_argument("--model", required=True, metavar="PATH",
                   help=f"local model folder, e.g. {EXAMPLE_MODEL} downloaded with huggingface-cli")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="manifest to write (default: MANIFEST itself, or DIR/manifest.json)")
    p.add_argument("--overwrite", action="store_true", help="caption every image, not only those without a caption")
    p.add_argument("--batch-size", type=int, default=8, help="images per model call (default 8)")
    p.add_argument("--template", default=DEFAULT_TEMPLATE,
                   help="final caption; fields {caption}, {category}, {file} (default %(default)r)")
    p.add_argument("--max-new-tokens", type=int, default=30, help="longest caption in tokens (default 30)")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N or mps")
    p.set_defaults(func=run_caption)


def _records_and_output(args: argparse.Namespace) -> tuple[list[Record], Path]:
    if bool(args.manifest) == bool(args.folder):
        raise CaptionError("give either a MANIFEST or --folder DIR")
    if args.manifest:
        return read_manifest(args.manifest), Path(args.output or args.manifest)
    output = Path(args.output) if args.output else Path(args.folder) / "manifest.json"
    found = from_folders(args.folder, template="")  # empty: no sidecar text, so the model writes one
    if not output.exists():
        return found, output
    records = read_manifest(output)
    listed = {os.path.abspath(r.path) for r in records if r.path is not None}
    return records + [r for r in found if os.path.abspath(r.path) not in listed], output


def run_caption(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.batch_size < 1:
            raise CaptionError(f"--batch-size must be at least 1, got {args.batch_size}")
        if args.max_new_tokens < 1:
            raise CaptionError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
        check_template(args.template, TEMPLATE_FIELDS, CaptionError)
        if "{caption}" not in args.template:
            raise CaptionError(f"template {args.template!r} has no {{caption}}: the model's text would be thrown away")
        records, output = _records_and_output(args)
        if output.suffix.lower() not in FORMATS:  # found now, not after loading the model
            raise CaptionError(f"{output}: the output manifest must end in {', '.join(FORMATS)}")
        captioner = Captioner.load(args.model, args.device, args.max_new_tokens)
    except (CaptionError, ManifestError) as exc:
        print(f"imagebot data caption: {exc}", file=sys.stderr)
        return 2

    import torch  # loaded by the captioner already

    def save(done: int, total: int) -> None:
        write_manifest(records, output)
        print(f"captioned {done}/{total}", file=sys.stderr)

    try:
        stats = caption_records(records, captioner, overwrite=args.overwrite, batch_size=args.batch_size,
                                template=args.template, after_batch=save)
        write_manifest(records, output)
    except OSError as exc:  # the manifest cannot be written (full disk, permissions)
        print(f"imagebot data caption: {exc}", file=sys.stderr)
        return 1
    except torch.OutOfMemoryError:
        print(f"imagebot data caption: out of GPU memory at --batch-size {args.batch_size}; captions so far "
              f"are saved in {output}: run again with a smaller --batch-size", file=sys.stderr)
        return 1
    print(f"{output}: {stats.captioned} captioned, {stats.kept} kept, {stats.unreadable} unreadable"
          + (f", {stats.remote} URLs skipped (download them first)" if stats.remote else ""))
    return 1 if stats.unreadable else 0
