"""Generation requests: what they hold, and parsing what the user typed.

Two ways in, one way out. Chat text carries Midjourney-style inline flags
(`a fox in the snow --ar 16:9 --seed 42 --no blurry, text`); slash-command options, HTTP fields
and CLI flags arrive as keyword options. Both become `RequestOptions` (only what the user said),
and `bot.core.resolve.resolve()` turns that into a complete, validated `GenerationRequest`. Every
refusal is a `UserError` a chat user can act on.

This module holds the two dataclasses and the flags; reading one value (a number, a size, a LoRA
list) is `bot.core.option_values`, and keeping text on one line without forged labels is
`bot.core.prompt_text`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from bot.core.errors import UserError
from bot.core.option_values import (LORA_EXAMPLE, parse_aspect, parse_loras, parse_model_name, parse_refiner,
                                    parse_scheduler, parse_seed, parse_size, shorten, to_bool, to_float, to_int)
from bot.core.prompt_text import check_negative_label, clean_text

MAX_SEED = 2**32 - 1

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
    "lora": ("loras", LORA_EXAMPLE),
    "fast": ("fast", "--fast"),
    "strength": ("strength", "--strength 0.6"),
    "iw": ("image_weight", "--iw 1"),
    "refiner": ("refiner", "--refiner 0.7"),
}
# Flags that may be given more than once; their values add up (--lora a:1 --lora b:0.5).
REPEATABLE = {"loras"}
# Flags that are switched on by being there; they take no value.
SWITCHES = {"fast"}

# A flag starts at the beginning or after whitespace. Phones turn "--" into an em or en dash,
# so those count too. The name must be followed by whitespace or the end of the text.
_FLAG = re.compile(r"(?:^|(?<=\s))(?:--|\u2014|\u2013)([A-Za-z][A-Za-z0-9_-]*)(?=\s|$)")


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
    loras: tuple[tuple[str, float], ...] | None = None  # --lora flags (tags in the prompt are read later)
    fast: bool | None = None  # fast mode (LCM): few steps, low guidance
    upscale: bool | None = None  # enlarge `init_image` (the Upscale button), with its own size limit
    upscaler: str | None = None  # the upscaler variant it runs first (from the configuration)
    mask_image: str | None = None  # inpainting: white where the image is redrawn
    image_weight: float | None = None  # Midjourney's --iw: how much the image prompt counts (0-2)
    refiner: float | None = None  # where the model's refiner takes over (0.7), or 0 for no refiner
    # AUTOMATIC1111's and Forge's two guidance numbers (the sdapi): "CFG scale", classifier-free
    # guidance, and "Distilled CFG Scale", the guidance a distilled model (FLUX.1 dev) was made
    # with. Which one is the model's guidance is its family's business (family_rules.forge_guidance).
    cfg_scale: float | None = None
    distilled_cfg_scale: float | None = None


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
    # LoRA variants applied on top of the model, as (name, weight): from <lora:NAME:W> tags in the
    # prompt and --lora flags. The prompt keeps its tags, as AUTOMATIC1111's does.
    loras: tuple[tuple[str, float], ...] = ()
    fast: bool = False  # the variant's fast mode: its LCM-LoRA (if it names one), few steps, low guidance
    upscale: bool = False  # init_image enlarged to width x height (upscaler, then tiled img2img)
    upscaler: str | None = None  # the upscaler variant an upscale runs first (None: resizing only)
    mask_image: str | None = None  # path of the inpainting mask (white = redraw), with init_image
    refiner: str | None = None  # the refiner variant that runs the last steps (SDXL), if any
    refiner_switch: float | None = None  # the fraction of the steps the model runs before the refiner
    # A guidance-distilled model (FLUX.1) run with true classifier-free guidance at this scale, as
    # its variant sets it: the negative prompt then works. 0: off.
    true_cfg: float = 0.0

    def seeds(self) -> list[int]:
        """One seed per image, as AUTOMATIC1111 does: seed, seed+1, ..."""
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.count)]

    def batch_key(self) -> tuple:
        """Requests with equal keys can share one pipeline call."""
        key = (self.model, self.width, self.height, self.steps, self.guidance, self.scheduler,
               self.init_image is not None, self.strength)
        # Other requests keep the key they always had (jobs queued by earlier versions still batch with them):
        # inpainting runs another pipeline, and only requests with the same refiner setting, fast mode,
        # upscaling and LoRA set run together.
        if self.mask_image is not None:
            key += ("inpaint",)
        if self.refiner:
            key += (self.refiner, self.refiner_switch)
        if self.fast:
            key += ("fast",)
        if self.upscale:
            key += ("upscale", self.upscaler)
        if self.loras:
            key += (self.loras,)
        if self.true_cfg:
            key += ("true_cfg", self.true_cfg)
        return key

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GenerationRequest":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "loras" in values:  # JSON gives lists
            values["loras"] = tuple((str(name), float(weight)) for name, weight in values["loras"])
        return cls(**values)


# --- parsing -------------------------------------------------------------------------------


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
            raise UserError("flag_unknown", flag=shorten(flag), allowed=allowed_flags())
        field, example = FLAGS[flag]
        if flag in SWITCHES:
            if value:
                raise UserError("flag_takes_no_value", flag=flag, got=shorten(value))
            value = "on"
        elif not value:
            raise UserError("flag_needs_value", flag=flag, example=example)
        if field in raw and field in REPEATABLE:
            value = f"{raw[field][1]}, {value}"
        elif field in raw:
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
    loras: object = None,
    fast: object = None,
    upscale: bool | None = None,
    upscaler: str | None = None,
    mask_image: str | None = None,
    image_weight: object = None,
    refiner: object = None,
    cfg_scale: object = None,
    distilled_cfg_scale: object = None,
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
    prompt = clean_text(prompt)
    negative_prompt = None if negative_prompt is None else clean_text(str(negative_prompt))
    check_negative_label(prompt, negative_prompt)
    return RequestOptions(
        prompt=prompt,
        negative_prompt=negative_prompt,
        model=None if model is None else parse_model_name(model),
        seed=parse_seed(seed),
        steps=None if steps is None else to_int("steps", steps),
        guidance=None if guidance is None else to_float("guidance", guidance),
        width=None if width is None else to_int("width", width),
        height=None if height is None else to_int("height", height),
        aspect=aspect,
        count=None if count is None else to_int("count", count),
        scheduler=None if scheduler is None else parse_scheduler(scheduler),
        init_image=init_image,
        strength=None if strength is None else to_float("strength", strength),
        loras=None if loras is None else parse_loras(loras),
        fast=None if fast is None else to_bool("fast", fast),
        upscale=upscale,
        upscaler=upscaler,
        mask_image=mask_image,
        image_weight=None if image_weight is None else to_float("iw", image_weight),
        refiner=None if refiner is None else parse_refiner(refiner),
        cfg_scale=None if cfg_scale is None else to_float("cfg_scale", cfg_scale),
        distilled_cfg_scale=None if distilled_cfg_scale is None else to_float("distilled_cfg_scale",
                                                                               distilled_cfg_scale),
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
    check_negative_label(merged["prompt"], None)  # "... Negative" + "prompt: ..."
    return RequestOptions(**merged)


# How a RequestOptions field is called in messages (the flag a user would type).
_FIELD_FLAG = {"negative_prompt": "no", "width": "size", "height": "size", "guidance": "cfg", "cfg_scale": "cfg",
               "count": "n", "aspect": "ar", "image_weight": "iw", "loras": "lora"}
