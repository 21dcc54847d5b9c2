"""Resolving a request: the chosen model's defaults fill what the user did not say, the configured
limits are enforced, and sizes are worked out from aspect ratios. What comes out is a complete,
validated `GenerationRequest`; every refusal is a `UserError` a chat user can act on.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import replace
from typing import Mapping

from bot.config import Limits
from bot.core.errors import UserError
from bot.core.family_rules import check_family, check_guidance, forge_guidance, snap
from bot.core.option_values import shorten
from bot.core.prompt_syntax import check_prompt_syntax, lora_tags
from bot.core.request import MAX_SEED, GenerationRequest, RequestOptions
from bot.models.variant import FAST_MAX_GUIDANCE, FAST_MAX_STEPS, MODEL_NAME, VariantDefaults

MIN_STRENGTH = 0.1  # below this an image prompt comes back almost untouched


def size_for_aspect(aspect: tuple[int, int], native: tuple[int, int], step: int = 8) -> tuple[int, int]:
    """Keep the model's native pixel count (what it was trained at) with the asked shape."""
    area = native[0] * native[1]
    width = math.sqrt(area * aspect[0] / aspect[1])
    return snap(width, step), snap(width * aspect[1] / aspect[0], step)


def fit_to_limits(size: tuple[int, int], limits: Limits, step: int = 8) -> tuple[int, int]:
    """Scale a size worked out from an aspect ratio into the limits, keeping its shape, on the
    family's grid of `step` pixels.

    Only for sizes the bot chose: a size the user typed is refused with a message instead.
    """
    width, height = size
    grow = max(1.0, limits.min_side / min(width, height))
    scale = min(grow, limits.max_side / max(width, height), math.sqrt(limits.max_pixels / (width * height)))
    low = -(-limits.min_side // step) * step
    high = limits.max_side // step * step

    def fit(side: float) -> int:
        return min(high, max(low, int(side * scale) // step * step))

    return fit(width), fit(height)


def resolve(
    options: RequestOptions,
    variants: Mapping[str, VariantDefaults],
    default_model: str,
    limits: Limits,
    models_dir: str = "models",
    unavailable: Mapping[str, str] | None = None,
    lora_bases: Mapping[str, str] | None = None,
) -> GenerationRequest:
    """Fill in defaults from the model and check every value against the limits.

    `variants` are the usable models; `unavailable` maps models that exist but cannot be used
    (broken files, a missing base) to the reason, so the user learns why. `lora_bases` maps each
    usable LoRA variant to the model it was made for.
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
    _check_role(model, defaults, variants, options)
    options = forge_guidance(options, defaults)

    negative = defaults.negative_prompt if options.negative_prompt is None else options.negative_prompt
    if len(negative) > limits.max_prompt_chars:
        raise UserError("negative_too_long", got=len(negative), limit=limits.max_prompt_chars)
    check_prompt_syntax(options.prompt)
    check_prompt_syntax(negative)
    check_family(model, defaults, options, negative)
    loras = resolve_loras(options, model, variants, lora_bases or {}, limits.max_loras)

    step = defaults.family.size_step
    if options.aspect is not None:
        native = (defaults.width, defaults.height)
        width, height = fit_to_limits(size_for_aspect(options.aspect, native, step), model_limits(limits, defaults), step)
    else:
        width = snap(options.width, step) if options.width is not None else defaults.width
        height = snap(options.height, step) if options.height is not None else defaults.height
    if options.upscale:
        _check_upscaled_size(width, height, limits)  # tiles at the model's own size: no model limit
    else:
        _check_size(width, height, limits)
        _check_model_size(model, width, height, defaults)

    fast = bool(options.fast)
    if fast and not defaults.fast_steps:
        names = sorted(name for name, d in variants.items() if d.fast_steps)
        raise UserError("no_fast_mode", model=model, fast_models=": " + ", ".join(names) if names else "")
    steps = (defaults.fast_steps if fast else defaults.steps) if options.steps is None else options.steps
    _check_range("steps", steps, 1, FAST_MAX_STEPS if fast else limits.max_steps)
    guidance = _guidance(options, defaults, limits, fast)
    check_guidance(model, defaults, options, guidance)
    count = 1 if options.count is None else options.count
    _check_range("count", count, 1, limits.max_images)
    seed = secrets.randbelow(MAX_SEED + 1) if options.seed is None else options.seed
    _check_range("seed", seed, 0, MAX_SEED)
    if options.upscale:
        # An upscale's strength is its optional img2img pass over the enlarged image: 0 skips it.
        strength = options.strength or 0.0
        if strength and not MIN_STRENGTH <= strength <= 1:
            raise UserError("strength_out_of_range", got=_num(strength))
    else:
        strength = image_strength(options, defaults.strength)
    if options.mask_image is not None and options.init_image is None:
        raise UserError("mask_needs_image")
    refiner, switch = _refiner(model, defaults, options)
    if steps < 2:  # base and refiner each need a step of their own
        refiner, switch = None, None

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
        scheduler=options.scheduler or (defaults.fast_scheduler if fast else defaults.scheduler),
        init_image=options.init_image,
        strength=strength if options.init_image else None,
        mask_image=options.mask_image if options.init_image else None,
        loras=loras,
        fast=fast,
        upscale=bool(options.upscale and options.init_image),
        upscaler=options.upscaler if options.upscale and options.init_image else None,
        refiner=refiner,
        refiner_switch=switch,
        true_cfg=defaults.true_cfg if defaults.family.true_cfg and defaults.true_cfg > 1 else 0.0,
    )


def resolve_loras(options: RequestOptions, model: str, variants: Mapping[str, VariantDefaults],
                  lora_bases: Mapping[str, str], limit: int) -> tuple[tuple[str, float], ...]:
    """The LoRAs of a request: `<lora:NAME:W>` tags in its prompt, then its --lora flags; each
    must be a LoRA variant made for the chosen model's base. A LoRA named twice with one weight is
    one; with two weights, the request is refused (which one was meant?)."""
    chosen: dict[str, float] = {}
    for name, weight in [*lora_tags(options.prompt), *(options.loras or ())]:
        if chosen.get(name, weight) != weight:
            raise UserError("flag_twice", flag=f"lora {name}")
        chosen[name] = weight
    if len(chosen) > limit:
        raise UserError("too_many_loras", count=len(chosen), limit=limit)
    base = lora_bases.get(model, model)  # a LoRA variant as the model: its base takes more LoRAs
    mine = sorted(name for name, of in lora_bases.items() if of == base)
    for name in chosen:
        if name not in lora_bases:
            if not MODEL_NAME.fullmatch(name):
                raise UserError("bad_model_name", got=shorten(name))
            if name in variants:
                raise UserError("lora_not_a_lora", got=name)
            raise UserError("lora_unknown", got=shorten(name), model=model, available=", ".join(mine) or "none")
        if lora_bases[name] != base:
            raise UserError("lora_wrong_base", got=name, base=lora_bases[name], model=model,
                            available=", ".join(mine) or "none")
    return tuple(chosen.items())


def image_strength(options: RequestOptions, default: float) -> float:
    """How far an image prompt may be changed: --strength 0.1-1, or Midjourney's --iw 0-2 (how much
    the image counts: 1 is the usual 0.6, 2 keeps it close, 0 hardly at all)."""
    if options.strength is not None and options.image_weight is not None:
        raise UserError("strength_and_iw")
    if options.image_weight is not None:
        if not 0 <= options.image_weight <= 2:
            raise UserError("iw_out_of_range", got=_num(options.image_weight))
        return round(min(1.0, max(MIN_STRENGTH, 1 - 0.4 * options.image_weight)), 3)
    if options.strength is not None:
        if not MIN_STRENGTH <= options.strength <= 1:
            raise UserError("strength_out_of_range", got=_num(options.strength))
        return options.strength
    return default


def _guidance(options: RequestOptions, defaults: VariantDefaults, limits: Limits, fast: bool) -> float:
    """The request's guidance, checked. Few-step models burn at high classifier-free guidance, so
    fast mode holds it low; a distilled guidance (FLUX.1 [dev]'s embedding) is no CFG, and its
    few-step LoRAs are made at the model's own."""
    fast_cfg = fast and defaults.family.guidance_kind == "cfg"
    guidance = options.guidance
    if guidance is None:
        guidance = defaults.fast_guidance if fast_cfg else defaults.guidance
    _check_range("guidance", guidance, 0, min(FAST_MAX_GUIDANCE, limits.max_guidance) if fast_cfg else limits.max_guidance)
    return guidance


def _check_role(model: str, defaults: VariantDefaults, variants: Mapping[str, VariantDefaults],
                options: RequestOptions) -> None:
    """Refiner and inpainting models do not draw from a prompt alone; say what they are for."""
    if defaults.role == "refiner":
        bases = sorted(name for name, other in variants.items() if other.refiner == model)
        if bases:
            raise UserError("model_is_refiner_of", name=model, bases=", ".join(bases))
        raise UserError("model_is_refiner", name=model)
    if defaults.role == "inpainting" and options.mask_image is None:  # with a mask it does its job
        others = sorted(name for name, other in variants.items() if other.role == "text2image")
        raise UserError("model_is_inpainting", name=model, available=", ".join(others) or "none")


def _refiner(model: str, defaults: VariantDefaults, options: RequestOptions) -> tuple[str | None, float | None]:
    """The refiner that finishes this request and where it takes over, or (None, None).

    Image-to-image requests (variations, upscales) start from a finished image: no refiner. Fast
    mode runs the base alone unless the request asks for the refiner: the refiner has no LCM weights
    and draws poorly in a few steps."""
    if options.refiner and not defaults.refiner:
        raise UserError("no_refiner", model=model)
    if not defaults.refiner or options.init_image is not None or options.fast and options.refiner is None:
        return None, None
    switch = defaults.refiner_switch if options.refiner is None else options.refiner
    return (defaults.refiner, switch) if switch > 0 else (None, None)


def model_limits(limits: Limits, defaults: VariantDefaults) -> Limits:
    """The bot's limits, tightened by what the model itself draws well."""
    return replace(limits, max_side=min(limits.max_side, defaults.max_side or limits.max_side),
                   max_pixels=min(limits.max_pixels, defaults.max_pixels or limits.max_pixels))


def _check_model_size(model: str, width: int, height: int, defaults: VariantDefaults) -> None:
    native = f"{defaults.width}x{defaults.height}"
    if defaults.max_side and max(width, height) > defaults.max_side:
        raise UserError("model_side_too_large", model=model, width=width, height=height, limit=defaults.max_side,
                        native=native)
    if defaults.max_pixels and width * height > defaults.max_pixels:
        raise UserError("model_pixels_too_large", model=model, width=width, height=height,
                        limit=defaults.max_pixels, native=native)


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise UserError("out_of_range", name=name, low=_num(low), high=_num(high), got=_num(value))


def _num(value: float) -> str:
    if isinstance(value, int):
        return shorten(str(value))
    return str(int(value)) if value.is_integer() else str(value)


def _check_upscaled_size(width: int, height: int, limits: Limits) -> None:
    """An upscale is drawn in tiles, so only its sides are limited (by their own setting)."""
    if max(width, height) > limits.max_upscaled_side:
        raise UserError("upscale_too_large", width=width, height=height, limit=limits.max_upscaled_side)
    if min(width, height) < limits.min_side:
        raise UserError("side_out_of_range", low=limits.min_side, high=limits.max_upscaled_side,
                        width=width, height=height)


def _check_size(width: int, height: int, limits: Limits) -> None:
    low, high = limits.min_side, limits.max_side
    if not (low <= width <= high and low <= height <= high):
        raise UserError("side_out_of_range", low=low, high=high, width=width, height=height)
    if width * height > limits.max_pixels:
        scale = math.sqrt(limits.max_pixels / (width * height))
        example = f"{int(width * scale) // 8 * 8}x{int(height * scale) // 8 * 8}"
        raise UserError("too_many_pixels", width=width, height=height, pixels=width * height,
                        limit=limits.max_pixels, example=example)

