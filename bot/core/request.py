"""Generation requests: parsing what the user typed, filling defaults, enforcing limits.

Two ways in, one way out. Chat text carries Midjourney-style inline flags
(`a fox in the snow --ar 16:9 --seed 42 --no blurry, text`); slash-command options, HTTP fields
and CLI flags arrive as keyword options. Both become `RequestOptions` (only what the user said),
and `resolve()` turns that into a complete, validated `GenerationRequest` using the chosen model's
defaults and the configured limits. Every refusal is a `UserError` a chat user can act on.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from bot.config import Limits
from bot.core.errors import UserError

MAX_SEED = 2**32 - 1

# Short scheduler names; the engine maps each to a diffusers scheduler class.
SCHEDULERS = ("dpm++", "dpm++_karras", "euler", "euler_a", "ddim", "pndm", "heun", "unipc", "lcm")

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Inline flag -> RequestOptions field, with an example for "needs a value" messages.
FLAGS: dict[str, tuple[str, str]] = {
    "ar": ("aspect", "--ar 16:9"),
    "aspect": ("aspect", "--aspect 16:9"),
    "size": ("size", "--size 768x512"),
    "seed": ("seed", "--seed 42"),
    "no": ("negative_prompt", "--no blurry, text"),
    "neg": ("negative_prompt", "--neg blurry, text"),
    "steps": ("steps", "--steps 30"),
    "cfg": ("guidance", "--cfg 7"),
    "guidance": ("guidance", "--guidance 7"),
    "n": ("count", "--n 4"),
    "count": ("count", "--count 4"),
    "model": ("model", "--model finetuned"),
    "scheduler": ("scheduler", "--scheduler euler_a"),
    "sampler": ("scheduler", "--sampler euler_a"),
}

# A flag starts at the beginning or after whitespace. Phones turn "--" into an em or en dash,
# so those count too. The name must be followed by whitespace or the end of the text.
_FLAG = re.compile(r"(?:^|(?<=\s))(?:--|\u2014|\u2013)([A-Za-z][A-Za-z0-9_-]*)(?=\s|$)")
# Control characters would end up in PNG text chunks and chat messages; keep newlines and tabs.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class VariantDefaults:
    """What a model variant uses when the user does not say (from its variant.toml and config)."""

    width: int = 512
    height: int = 512
    steps: int = 25
    guidance: float = 7.0
    scheduler: str = "dpm++"
    negative_prompt: str = ""


@dataclass(frozen=True)
class RequestOptions:
    """What the user asked for; None means "not said, use the default"."""

    prompt: str = ""
    negative_prompt: str | None = None
    model: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    aspect: tuple[int, int] | None = None
    count: int | None = None
    scheduler: str | None = None
    init_image: str | None = None
    strength: float | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """A complete request: every value decided, ready for the engine and for storage."""

    prompt: str
    negative_prompt: str
    model: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    count: int = 1
    scheduler: str = "dpm++"
    init_image: str | None = None  # path of the source image for img2img (variations, upscale)
    strength: float | None = None

    def seeds(self) -> list[int]:
        """One seed per image, as AUTOMATIC1111 does: seed, seed+1, ..."""
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.count)]

    def batch_key(self) -> tuple:
        """Requests with equal keys can share one pipeline call."""
        return (self.model, self.width, self.height, self.steps, self.guidance, self.scheduler,
                self.init_image is not None, self.strength)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GenerationRequest":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# --- parsing -------------------------------------------------------------------------------


def clean_text(text: str) -> str:
    return _CONTROL.sub(" ", text).strip()


def parse_prompt(text: str) -> RequestOptions:
    """Split chat text into the prompt and its inline flags.

    The prompt is the text before the first flag; each flag's value runs to the next flag, so
    `--no blurry, text` keeps its comma-separated list.
    """
    text = clean_text(text)
    matches = list(_FLAG.finditer(text))
    prompt = text[: matches[0].start()].strip() if matches else text
    raw: dict[str, tuple[str, str]] = {}  # field -> (flag as typed, value)
    for i, match in enumerate(matches):
        flag = match.group(1).lower()
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        value = text[match.end(): end].strip()
        if flag not in FLAGS:
            raise UserError("flag_unknown", flag=_shorten(flag), allowed=allowed_flags())
        field, example = FLAGS[flag]
        if not value:
            raise UserError("flag_needs_value", flag=flag, example=example)
        if field in raw:
            raise UserError("flag_twice", flag=flag)
        raw[field] = (flag, value)
    return options_from_fields(prompt=prompt, **{field: value for field, (_, value) in raw.items()})


def allowed_flags() -> str:
    return ", ".join(f"--{name}" for name in FLAGS)


def options_from_fields(
    prompt: str = "",
    *,
    negative_prompt: object = None,
    model: object = None,
    seed: object = None,
    steps: object = None,
    guidance: object = None,
    width: object = None,
    height: object = None,
    size: object = None,
    aspect: object = None,
    count: object = None,
    scheduler: object = None,
    init_image: str | None = None,
    strength: object = None,
) -> RequestOptions:
    """Keyword options (slash commands, HTTP JSON, CLI) -> RequestOptions, checking types.

    Values may be strings (as typed) or already numbers (JSON); both get the same messages.
    """
    if not isinstance(prompt, str):
        raise UserError("prompt_empty")
    if size is not None:
        if width is not None or height is not None:
            raise UserError("flag_twice", flag="size")
        width, height = parse_size(size)
    if aspect is not None:
        if width is not None or height is not None:
            raise UserError("flag_conflict")
        aspect = parse_aspect(aspect)
    return RequestOptions(
        prompt=clean_text(prompt),
        negative_prompt=None if negative_prompt is None else clean_text(str(negative_prompt)),
        model=None if model is None else parse_model_name(model),
        seed=_seed(seed),
        steps=None if steps is None else to_int("steps", steps),
        guidance=None if guidance is None else to_float("guidance", guidance),
        width=None if width is None else to_int("width", width),
        height=None if height is None else to_int("height", height),
        aspect=aspect,
        count=None if count is None else to_int("count", count),
        scheduler=None if scheduler is None else parse_scheduler(scheduler),
        init_image=init_image,
        strength=None if strength is None else to_float("strength", strength),
    )


def merge_options(inline: RequestOptions, explicit: RequestOptions) -> RequestOptions:
    """Combine flags typed in the prompt with separately given options.

    The same setting given both ways with different values is refused rather than silently
    picking one: the user would not know which one won.
    """
    merged = {}
    for f in fields(RequestOptions):
        a, b = getattr(inline, f.name), getattr(explicit, f.name)
        if f.name == "prompt":
            merged["prompt"] = " ".join(p for p in (a, b) if p)
        elif a is not None and b is not None and a != b:
            raise UserError("flag_twice", flag=_FIELD_FLAG.get(f.name, f.name))
        else:
            merged[f.name] = a if a is not None else b
    if merged["aspect"] is not None and (merged["width"] is not None or merged["height"] is not None):
        raise UserError("flag_conflict")
    return RequestOptions(**merged)


# How a RequestOptions field is called in messages (the flag a user would type).
_FIELD_FLAG = {"negative_prompt": "no", "width": "size", "height": "size", "guidance": "cfg",
               "count": "n", "aspect": "ar"}


def _seed(value: object) -> int | None:
    """-1 means "random", as in AUTOMATIC1111 and ComfyUI."""
    if value is None:
        return None
    seed = to_int("seed", value)
    return None if seed == -1 else seed


def to_int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise UserError("not_integer", name=name, got=value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    if re.fullmatch(r"[+-]?\d{1,40}", text):
        return int(text)
    raise UserError("not_integer", name=name, got=_shorten(text))


def to_float(name: str, value: object) -> float:
    if isinstance(value, bool):
        raise UserError("not_number", name=name, got=value)
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            raise UserError("not_number", name=name, got=_shorten(str(value))) from None
    else:
        text = str(value).strip()
        if not re.fullmatch(r"[+-]?(\d{1,6}(\.\d*)?|\.\d+)", text):
            raise UserError("not_number", name=name, got=_shorten(text))
        number = float(text)
    if not math.isfinite(number):
        raise UserError("not_number", name=name, got=value)
    return number


def parse_size(value: object) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d{1,6})\s*[xX×*]\s*(\d{1,6})\s*", str(value))
    if not match:
        raise UserError("bad_size", got=_shorten(str(value)))
    return int(match.group(1)), int(match.group(2))


def parse_aspect(value: object) -> tuple[int, int]:
    if isinstance(value, tuple) and len(value) == 2:
        value = f"{value[0]}:{value[1]}"
    match = re.fullmatch(r"\s*(\d{1,3})\s*[:/xX]\s*(\d{1,3})\s*", str(value))
    if not match or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise UserError("bad_aspect", got=_shorten(str(value)))
    w, h = int(match.group(1)), int(match.group(2))
    if not 0.25 <= w / h <= 4:
        raise UserError("aspect_out_of_range", got=f"{w}:{h}")
    return w, h


def parse_model_name(value: object) -> str:
    name = str(value).strip()
    if not MODEL_NAME.fullmatch(name):
        raise UserError("bad_model_name", got=_shorten(name))
    return name


def parse_scheduler(value: object) -> str:
    name = str(value).strip().lower().replace(" ", "_")
    if name not in SCHEDULERS:
        raise UserError("unknown_scheduler", got=_shorten(name), allowed=", ".join(SCHEDULERS))
    return name


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- resolving -----------------------------------------------------------------------------


def snap8(value: float) -> int:
    """Latents are 1/8 of the image size, so sides must be multiples of 8."""
    return max(8, int(round(value / 8)) * 8)


def size_for_aspect(aspect: tuple[int, int], native: tuple[int, int]) -> tuple[int, int]:
    """Keep the model's native pixel count (what it was trained at) with the asked shape."""
    area = native[0] * native[1]
    width = math.sqrt(area * aspect[0] / aspect[1])
    return snap8(width), snap8(width * aspect[1] / aspect[0])


def fit_to_limits(size: tuple[int, int], limits: Limits) -> tuple[int, int]:
    """Scale a size worked out from an aspect ratio into the limits, keeping its shape.

    Only for sizes the bot chose: a size the user typed is refused with a message instead.
    """
    width, height = size
    grow = max(1.0, limits.min_side / min(width, height))
    scale = min(grow, limits.max_side / max(width, height), math.sqrt(limits.max_pixels / (width * height)))
    low = -(-limits.min_side // 8) * 8
    high = limits.max_side // 8 * 8

    def fit(side: float) -> int:
        return min(high, max(low, int(side * scale) // 8 * 8))

    return fit(width), fit(height)


def resolve(
    options: RequestOptions,
    variants: Mapping[str, VariantDefaults],
    default_model: str,
    limits: Limits,
    models_dir: str = "models",
    unavailable: Mapping[str, str] | None = None,
) -> GenerationRequest:
    """Fill in defaults from the model and check every value against the limits.

    `variants` are the usable models; `unavailable` maps models that exist but cannot be used
    (broken files, a missing base) to the reason, so the user learns why.
    """
    if not options.prompt:
        raise UserError("prompt_empty")
    if len(options.prompt) > limits.max_prompt_chars:
        raise UserError("prompt_too_long", got=len(options.prompt), limit=limits.max_prompt_chars)

    model = options.model or default_model
    if model not in variants:
        if unavailable and model in unavailable:
            raise UserError("model_broken", name=model, error=unavailable[model])
        if not variants:
            raise UserError("no_models", got=model, models_dir=str(models_dir).rstrip("/\\"))
        raise UserError("unknown_model", got=model, available=", ".join(sorted(variants)))
    defaults = variants[model]

    negative = defaults.negative_prompt if options.negative_prompt is None else options.negative_prompt
    if len(negative) > limits.max_prompt_chars:
        raise UserError("negative_too_long", got=len(negative), limit=limits.max_prompt_chars)

    if options.aspect is not None:
        width, height = fit_to_limits(size_for_aspect(options.aspect, (defaults.width, defaults.height)), limits)
    else:
        width = snap8(options.width) if options.width is not None else defaults.width
        height = snap8(options.height) if options.height is not None else defaults.height
    _check_size(width, height, limits)

    steps = defaults.steps if options.steps is None else options.steps
    _check_range("steps", steps, 1, limits.max_steps)
    guidance = defaults.guidance if options.guidance is None else options.guidance
    _check_range("guidance", guidance, 0, limits.max_guidance)
    count = 1 if options.count is None else options.count
    _check_range("count", count, 1, limits.max_images)
    seed = secrets.randbelow(MAX_SEED + 1) if options.seed is None else options.seed
    _check_range("seed", seed, 0, MAX_SEED)
    if options.strength is not None and not 0.05 <= options.strength <= 1:
        raise UserError("strength_out_of_range", got=options.strength)

    return GenerationRequest(
        prompt=options.prompt,
        negative_prompt=negative,
        model=model,
        seed=seed,
        steps=steps,
        guidance=guidance,
        width=width,
        height=height,
        count=count,
        scheduler=options.scheduler or defaults.scheduler,
        init_image=options.init_image,
        strength=options.strength if options.init_image else None,
    )


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise UserError("out_of_range", name=name, low=_num(low), high=_num(high), got=_num(value))


def _num(value: float) -> str:
    if isinstance(value, int):
        return _shorten(str(value))
    return str(int(value)) if value.is_integer() else str(value)


def _check_size(width: int, height: int, limits: Limits) -> None:
    low, high = limits.min_side, limits.max_side
    if not (low <= width <= high and low <= height <= high):
        raise UserError("side_out_of_range", low=low, high=high, width=width, height=height)
    if width * height > limits.max_pixels:
        scale = math.sqrt(limits.max_pixels / (width * height))
        example = f"{int(width * scale) // 8 * 8}x{int(height * scale) // 8 * 8}"
        raise UserError("too_many_pixels", width=width, height=height, pixels=width * height,
                        limit=limits.max_pixels, example=example)


def with_seed(request: GenerationRequest, seed: int) -> GenerationRequest:
    return replace(request, seed=seed)
