"""Writing generated images to disk together with how they were made.

Every PNG we write carries two text chunks:

* ``parameters``: the AUTOMATIC1111 "infotext", because that is the de facto
  standard other tools read (A1111's PNG Info tab, ComfyUI, Civitai, ...).
* ``imagebot``: our own JSON. The infotext is a human format that escapes
  nothing: its lines say what they are (the prompt, a line that starts with
  "Negative prompt:", the settings line last), so a line break in a prompt
  could forge the others. Requests keep prompts on one line and refuse the
  "Negative prompt:" label in them (bot.core.prompt_text), and the infotext is
  written so that even a prompt that did not pass there (a job stored by an
  older version) cannot forge a line. It still drops the prompts' surrounding
  whitespace, so the JSON is what we trust when reading our own files back.

The GPU worker and `imagebot imagine` write these files; writing or reading
them needs no torch, so this module imports neither torch nor diffusers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from bot.core.prompt_syntax import prompt_with_lora_tags
from bot.core.prompt_text import NEGATIVE_LABEL, one_line
from bot.files.atomic import write_atomic, write_text_atomic

A1111_CHUNK = "parameters"
IMAGEBOT_CHUNK = "imagebot"


@dataclass(frozen=True)
class ImageParameters:
    prompt: str
    negative_prompt: str
    steps: int
    sampler: str  # our short scheduler name, a key of A1111_SAMPLER_NAMES
    guidance: float
    seed: int
    width: int
    height: int
    model: str  # variant name, e.g. "demo"
    model_hash: str | None = None
    strength: float | None = None  # img2img denoising strength
    version: str | None = None  # e.g. "imagebot 0.1.0"
    lora_hashes: str | None = None  # A1111's "Lora hashes": "name: hash, name: hash"
    fast: str | None = None  # fast mode: the LCM-LoRA it used, or "on" for an LCM / Turbo model
    upscaler: str | None = None  # an upscale: the upscaler variant, or "Lanczos" (resized, then redrawn)
    refiner: str | None = None  # the refiner variant that ran the last steps (SDXL)
    refiner_switch: float | None = None  # the fraction of the steps before the refiner took over
    # A guidance-distilled model (FLUX.1 dev): its guidance, which Forge writes as "Distilled CFG
    # Scale" next to "CFG scale" 1 (or the true CFG scale it ran with).
    distilled_guidance: float | None = None


# Our short sampler name -> (A1111 "Sampler", A1111 "Schedule type"). Every
# scheduler a request may name needs one: save_png refuses a sampler missing here.
A1111_SAMPLER_NAMES: Mapping[str, tuple[str, str | None]] = MappingProxyType(
    {
        "dpm++": ("DPM++ 2M", None),
        "dpm++_karras": ("DPM++ 2M", "Karras"),
        "euler_a": ("Euler a", None),
        "euler": ("Euler", None),
        "ddim": ("DDIM", None),
        "lcm": ("LCM", None),
        "unipc": ("UniPC", None),
        "heun": ("Heun", None),
        "lms": ("LMS", None),
        "pndm": ("PLMS", None),
    }
)

_SHORT_SAMPLER = {
    (name.casefold(), schedule.casefold() if schedule else None): short
    for short, (name, schedule) in A1111_SAMPLER_NAMES.items()
}

# A1111 >= 1.9 writes the resolved schedule, never "Automatic", but forks do.
# "Uniform" is k-diffusion's get_sigmas(n), i.e. the model's own schedule,
# which is what our plain (non-Karras) samplers use too.
_PLAIN_SCHEDULES = {"automatic", "uniform"}

# A1111's own regex (modules/infotext_utils.py); it is slightly wider than the
# older `[\w ]+` key pattern so keys like "ControlNet 0" or "Hires CFG-scale"
# written by extensions still parse.
_SETTING = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE = NEGATIVE_LABEL

_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,120}")


# --- A1111 infotext ---------------------------------------------------------


def _quote(value: str) -> str:
    # A1111 quotes on comma, colon and newline, which would otherwise break the
    # settings line. We also quote values that start with a quote or carry
    # surrounding whitespace, since the reader would otherwise unquote/trim them.
    if any(c in value for c in ",:\n") or value.startswith('"') or value != value.strip():
        return json.dumps(value, ensure_ascii=False)
    return value


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)
        except ValueError:
            pass  # A1111 keeps malformed quoted values verbatim; so do we
    return value


def _number(value: float) -> str:
    # A1111 shows "CFG scale: 7", not "7.0"; repr keeps other floats exact.
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _one_line_prompt(text: str) -> str:
    # A prompt as the infotext holds it: its line breaks as spaces, and the label of the negative
    # prompt's line with a small "n", which A1111 and the readers that split the text on the label
    # (sd-parsers) take for text. The CLIP tokenizer reads both changes as it read the original
    # (whitespace runs are one space, and it lowercases), so the text still draws the same picture.
    return one_line(text).replace(_NEGATIVE, _NEGATIVE.lower())


def a1111_parameters(p: ImageParameters) -> str:
    """The AUTOMATIC1111 infotext for `p`, as stored in the `parameters` chunk."""
    try:
        sampler, schedule = A1111_SAMPLER_NAMES[p.sampler]
    except KeyError:
        raise ValueError(
            f"sampler {p.sampler!r} has no A1111 name; known: {', '.join(A1111_SAMPLER_NAMES)}"
        ) from None
    settings: dict[str, str | None] = {
        "Steps": str(p.steps),
        "Sampler": sampler,
        "Schedule type": schedule,
        "CFG scale": _number(p.guidance),
        "Distilled CFG Scale": None if p.distilled_guidance is None else _number(p.distilled_guidance),
        "Seed": str(p.seed),
        "Size": f"{p.width}x{p.height}",
        "Model hash": p.model_hash,
        "Model": p.model,
        "Denoising strength": None if p.strength is None else _number(p.strength),
        "Lora hashes": p.lora_hashes,
        "Fast mode": p.fast,
        "Postprocess upscaler": p.upscaler,
        # A1111's own names for the refiner (since 1.6), so its readers fill them in too.
        "Refiner": p.refiner,
        "Refiner switch at": None if p.refiner is None or p.refiner_switch is None else _number(p.refiner_switch),
        "Version": p.version,
    }
    settings_line = ", ".join(f"{k}: {_quote(v)}" for k, v in settings.items() if v is not None)
    # Requests hold no line breaks in their prompts (bot.core.prompt_text), but an older job's may.
    prompt, negative_prompt = _one_line_prompt(p.prompt), _one_line_prompt(p.negative_prompt)
    negative = f"\n{_NEGATIVE} {negative_prompt}" if negative_prompt else ""
    # A1111 strips the whole text; an empty prompt thus leaves no blank first line.
    return f"{prompt}{negative}\n{settings_line}".strip()


def parse_a1111_parameters(text: str) -> dict[str, str]:
    """Split an A1111 infotext into prompt, negative prompt and raw settings.

    Returns ``{"prompt": ..., "negative_prompt": ..., "Steps": "20", ...}``;
    setting values are unquoted but otherwise left as text.
    """
    *lines, last = text.replace("\r\n", "\n").strip().split("\n")
    # Same test as A1111: the final line is the settings line only if it has
    # at least three "Key: value" pairs, otherwise it belongs to the prompt.
    settings = _SETTING.findall(last)
    if len(settings) < 3:
        lines.append(last)
        settings = []

    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        if not negative and line.lstrip().startswith(_NEGATIVE):
            negative.append(line.lstrip()[len(_NEGATIVE) :])
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)

    result = {"prompt": "\n".join(prompt).strip(), "negative_prompt": "\n".join(negative).strip()}
    for key, value in settings:
        result[key] = _unquote(value)
    return result


def short_sampler(sampler: str, schedule: str | None) -> str:
    """Our short scheduler name for an A1111 sampler and schedule type ("DPM++ 2M" and "Karras", or
    the older "DPM++ 2M Karras"); ValueError for one we have no match for."""
    name = sampler.strip()
    if schedule is not None and schedule.strip().casefold() in _PLAIN_SCHEDULES:
        schedule = None
    # Before 1.9, A1111 folded the schedule into the name: "DPM++ 2M Karras".
    if schedule is None and name.casefold().endswith(" karras"):
        name, schedule = name[: -len(" karras")], "Karras"
    key = (name.casefold(), schedule.strip().casefold() if schedule else None)
    if key not in _SHORT_SAMPLER:
        shown = sampler if schedule is None else f"{sampler} (schedule type {schedule})"
        raise ValueError(f"unsupported A1111 sampler {shown!r}")
    return _SHORT_SAMPLER[key]


def parameters_from_a1111(text: str) -> ImageParameters:
    """Inverse of `a1111_parameters`; also reads infotexts written by A1111.

    A text without a ``Model`` setting gets ``model=""``: older A1111 versions
    wrote only the hash, and the rest is still worth having.
    """
    raw = parse_a1111_parameters(text)
    missing = [key for key in ("Steps", "Sampler", "CFG scale", "Seed", "Size") if key not in raw]
    if missing:
        raise ValueError(f"A1111 parameters lack the settings {', '.join(map(repr, missing))}")

    def get(key: str, convert: Callable[[str], Any]) -> Any:
        try:
            return convert(raw[key])
        except ValueError:
            raise ValueError(f"A1111 setting {key!r} has a bad value: {raw[key]!r}") from None

    def size(value: str) -> tuple[int, int]:
        match = _SIZE.match(value.strip())
        if match is None:
            raise ValueError(value)
        return int(match[1]), int(match[2])

    width, height = get("Size", size)
    return ImageParameters(
        prompt=raw["prompt"],
        negative_prompt=raw["negative_prompt"],
        steps=get("Steps", int),
        sampler=short_sampler(raw["Sampler"], raw.get("Schedule type")),
        guidance=get("CFG scale", float),
        seed=get("Seed", int),
        width=width,
        height=height,
        model=raw.get("Model", ""),
        model_hash=raw.get("Model hash"),
        strength=get("Denoising strength", float) if "Denoising strength" in raw else None,
        version=raw.get("Version"),
        lora_hashes=raw.get("Lora hashes"),
        fast=raw.get("Fast mode"),
        upscaler=raw.get("Postprocess upscaler"),
        refiner=raw.get("Refiner"),
        refiner_switch=get("Refiner switch at", float) if "Refiner switch at" in raw else None,
        distilled_guidance=get("Distilled CFG Scale", float) if "Distilled CFG Scale" in raw else None,
    )


# --- PNG files --------------------------------------------------------------


def save_png(
    image: Image.Image, path: Path, params: ImageParameters, extra: dict | None = None
) -> Path:
    """Atomically write `image` to `path` with both parameter chunks; returns `path`.

    `extra` must be JSON-serialisable; it is stored in the imagebot chunk only.
    """
    info = PngInfo()
    # Both texts are built before the temp file exists, so an unknown sampler
    # or unserialisable `extra` fails without touching the disk.
    info.add_text(A1111_CHUNK, a1111_parameters(params))
    info.add_text(IMAGEBOT_CHUNK, json.dumps({**asdict(params), "extra": extra or {}}, ensure_ascii=False))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda f: image.save(f, format="PNG", pnginfo=info), binary=True)


def read_png_parameters(path: Path) -> ImageParameters:
    """The parameters of a PNG: our JSON chunk if present, else the A1111 text."""
    with Image.open(path) as im:
        text = dict(getattr(im, "text", {}))
    if IMAGEBOT_CHUNK in text:
        return _parameters_from_json(text[IMAGEBOT_CHUNK], path)
    if A1111_CHUNK in text:
        return parameters_from_a1111(text[A1111_CHUNK])
    raise ValueError(
        f"{path}: no generation parameters (neither an {IMAGEBOT_CHUNK!r} "
        f"nor a {A1111_CHUNK!r} PNG text chunk)"
    )


def _parameters_from_json(text: str, path: Path) -> ImageParameters:
    try:
        data = json.loads(text)
        # Unknown keys ("extra", fields of a newer version) are ignored.
        known = {f.name for f in fields(ImageParameters)}
        return ImageParameters(**{k: v for k, v in data.items() if k in known})
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: unreadable {IMAGEBOT_CHUNK!r} chunk: {e}") from None


# --- Grids and batches ------------------------------------------------------


def make_grid(images: list[Image.Image], columns: int | None = None, gap: int = 0) -> Image.Image:
    """A contact sheet of `images`, row by row, on black.

    Every tile has the size of the first image (others are resized to it);
    `gap` is the number of pixels between tiles. Asking for more columns than
    images gives one row rather than empty columns.
    """
    if not images:
        raise ValueError("make_grid needs at least one image")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, not {gap}")
    if len(images) == 1:
        return images[0].copy()
    if columns is None:
        columns = math.ceil(math.sqrt(len(images)))
    if columns < 1:
        raise ValueError(f"columns must be >= 1, not {columns}")
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)

    w, h = images[0].size
    mode = images[0].mode if images[0].mode in ("RGB", "RGBA", "L") else "RGB"
    grid = Image.new(mode, (columns * w + (columns - 1) * gap, rows * h + (rows - 1) * gap))
    for i, image in enumerate(images):
        tile = image.convert(mode)
        if tile.size != (w, h):
            tile = tile.resize((w, h), Image.Resampling.LANCZOS)
        row, col = divmod(i, columns)
        grid.paste(tile, (col * (w + gap), row * (h + gap)))
    return grid


@dataclass(frozen=True)
class SavedImages:
    images: list[Path]
    grid: Path | None
    manifest: Path


def save_images(
    images: Sequence[Image.Image],
    params_per_image: Sequence[ImageParameters],
    out_dir: Path,
    stem: str,
) -> SavedImages:
    """Write a batch: `{stem}-{i}.png`, `{stem}-grid.png` (2+ images), `{stem}.json`.

    Existing files of the same names are replaced. The manifest is written
    last, so its presence means the whole batch is on disk.
    """
    if not isinstance(stem, str) or not _STEM.fullmatch(stem):
        raise ValueError(
            f"bad file stem {stem!r}: use 1-121 letters, digits, '_', '.', '-', starting with a letter or digit"
        )
    if not images:
        raise ValueError("save_images needs at least one image")
    if len(images) != len(params_per_image):
        raise ValueError(f"{len(images)} images but {len(params_per_image)} parameter sets")

    out_dir = Path(out_dir)
    paths = [
        save_png(image, out_dir / f"{stem}-{i}.png", params)
        for i, (image, params) in enumerate(zip(images, params_per_image))
    ]

    grid = None
    if len(images) > 1:
        grid = save_png(
            make_grid(list(images)),
            out_dir / f"{stem}-grid.png",
            params_per_image[0],
            extra={"grid": True, "seeds": [p.seed for p in params_per_image]},
        )

    manifest = {
        "stem": stem,
        "images": [{"file": p.name, "parameters": asdict(params)} for p, params in zip(paths, params_per_image)],
        "grid": grid.name if grid else None,
    }
    manifest_path = write_text_atomic(out_dir / f"{stem}.json", json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    return SavedImages(images=paths, grid=grid, manifest=manifest_path)


def save_result(result: Any, version: str, out_dir: Path, stem: str) -> SavedImages:
    """Write the images of an engine `GenerationResult` as a batch (see save_images), each with
    everything needed to make it again; `version` is e.g. "imagebot 0.1.0"."""
    request = result.request
    loras = getattr(result, "lora_fingerprints", ())
    prompt = prompt_with_lora_tags(request.prompt, getattr(request, "loras", ()))
    guidance, distilled = request.guidance, None
    kind = getattr(result, "guidance_kind", "cfg")
    if kind != "cfg":  # what Forge writes for FLUX: CFG scale 1 unless true CFG ran
        guidance, distilled = getattr(request, "true_cfg", 0.0) or 1.0, (request.guidance if kind == "distilled" else None)
    params = [
        ImageParameters(
            prompt=prompt, negative_prompt=request.negative_prompt, steps=request.steps,
            sampler=request.scheduler, guidance=guidance, distilled_guidance=distilled, seed=seed, width=request.width,
            height=request.height, model=request.model, model_hash=result.model_fingerprint[:10],
            strength=request.strength, version=version or None,
            lora_hashes=", ".join(f"{name}: {fingerprint[:12]}" for name, fingerprint in loras) or None,
            fast=(getattr(result, "fast_lora", None) or "on") if getattr(request, "fast", False) else None,
            upscaler=(request.upscaler or "Lanczos") if getattr(request, "upscale", False) else None,
            refiner=request.refiner, refiner_switch=request.refiner_switch,
        )
        for seed in result.seeds
    ]
    return save_images(result.images, params, out_dir, stem)

