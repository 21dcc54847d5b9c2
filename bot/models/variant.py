"""The variant schema: valid model and scheduler names, a variant's drawing defaults, and the
overrides config.toml may set for them. Checked here, once, for variant.toml and config.toml alike.

This module imports nothing from the rest of the bot, so the configuration, the core and the model
store can all build on it without importing each other.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, make_dataclass, replace
from typing import Any, Mapping

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Short scheduler names; the engine maps each to a diffusers scheduler class (for the flow-matching
# families, "euler" is their flow-matching Euler).
SCHEDULERS = ("dpm++", "dpm++_karras", "euler", "euler_a", "ddim", "pndm", "heun", "unipc", "lcm")

# How a family uses the guidance number: "cfg" classifier-free guidance over a negative prompt;
# "distilled" a guidance embedding the model was distilled with (FLUX.1 dev: no negative prompt, one
# pass per step); "none" the model takes no guidance at all (FLUX.1 schnell).
GUIDANCE_KINDS = ("cfg", "distilled", "none")


@dataclass(frozen=True)
class FamilyTraits:
    """What a model family can do and what it draws best with: read at submit to set defaults and
    refuse what the family does not have. Each family module in bot/engine/families/ declares one."""

    name: str = "sd1"  # the family's short name, e.g. "flux1-dev"
    label: str = "Stable Diffusion 1.x"  # what users read, e.g. "FLUX.1 [dev]"
    native_size: int = 512  # the side it was trained at
    size_step: int = 8  # sides are multiples of this (the VAE's factor times the transformer's patch)
    steps: int = 25
    guidance: float = 7.0
    scheduler: str = "dpm++"
    schedulers: tuple[str, ...] = SCHEDULERS  # the scheduler names it can draw with
    guidance_kind: str = "cfg"  # one of GUIDANCE_KINDS
    negative_prompt: bool = True  # whether a negative prompt does anything (true CFG can add it: true_cfg)
    cfg_above: float = 1.0  # classifier-free guidance (and so the negative prompt) runs above this guidance
    true_cfg: bool = False  # a guidance-distilled family that can run true CFG (variant.toml's true_cfg)
    prompt_weights: bool = True  # AUTOMATIC1111 (word:1.3) weights (CLIP text encoders, through compel)
    prompt_tokens: int = 77  # tokens its text encoder reads in one window (longer CLIP prompts take more)
    loras: bool = True
    img2img: bool = True
    inpaint: bool = True
    fast_scheduler: str = "lcm"  # the scheduler of its fast mode (a few-step LoRA or a turbo model)
    fast_steps: int = 0  # a few-step model (schnell, turbo): --fast is how it always draws


@dataclass(frozen=True)
class VariantDefaults:
    """What a model variant uses when the user does not say (from its variant.toml and config)."""

    width: int = 512
    height: int = 512
    steps: int = 25
    guidance: float = 7.0
    scheduler: str = "dpm++"
    negative_prompt: str = ""
    # The largest images this model draws well (0: only the bot's [limits] apply). Far above its
    # native size a model draws garbage, slowly: a 32 px model asked for 768x512 would hold the
    # only GPU worker for half an hour.
    max_side: int = 0
    max_pixels: int = 0
    # --fast: few steps at low guidance with the family's fast scheduler (LCM for the UNet
    # families, flow-matching Euler for the transformers), for a variant that names a few-step
    # LoRA (`fast_lora`) or is itself an LCM or Turbo model. fast_steps = 0: no fast mode.
    # fast_guidance is classifier-free guidance: a guidance-distilled family keeps its own.
    fast_steps: int = 0
    fast_guidance: float = 1.5
    fast_scheduler: str = "lcm"
    strength: float = 0.6  # image prompts: how far the image may be changed (0.1-1)
    # What the model is and what finishes its images: from variant.toml's top level (`refiner = ...`),
    # never from [defaults] or config.toml, because they describe the weights, not a taste.
    role: str = "text2image"  # one of ROLES
    refiner: str = ""  # the variant that finishes this model's images ("": none)
    refiner_switch: float = 0.8  # the fraction of the steps this model runs before its refiner takes over
    # The model family (SD 1.x, FLUX.1 dev, ...): what it can do, from its family module.
    family: FamilyTraits = FamilyTraits()
    # FLUX.1 dev and other guidance-distilled models: true classifier-free guidance at this scale
    # (above 1) makes a negative prompt work, at twice the time per step. 0: off.
    true_cfg: float = 0.0

# What a fast mode may use: LCM and Turbo models draw in a few steps at low guidance; more steps or
# guidance burn their images.
FAST_MAX_STEPS = 8
FAST_MAX_GUIDANCE = 2.0

# text2image: draws from a prompt. refiner: only finishes another model's latents (the SDXL
# refiner). inpainting: 9 input channels, redraws a masked region of an image.
ROLES = ("text2image", "refiner", "inpainting")
# VariantDefaults fields that describe the model itself rather than drawing defaults.
MODEL_TRAITS = ("role", "refiner", "refiner_switch", "family")

DEFAULT_TYPES: dict[str, type] = {name: kind for name, kind in typing.get_type_hints(VariantDefaults).items()
                                  if name not in MODEL_TRAITS}

# config.toml's [variants.<name>]: every drawing default of VariantDefaults, None meaning "keep the variant's
# own value", and whether the variant is offered at all. Built from VariantDefaults so that a new
# default is configurable without writing it down twice.
VariantOverride = make_dataclass(
    "VariantOverride",
    [*((name, kind | None, None) for name, kind in DEFAULT_TYPES.items()), ("enabled", bool, True)],
    frozen=True,
    namespace={"__module__": __name__,
               "__doc__": "Per-variant defaults from config.toml; they win over the variant's own variant.toml."},
)


def overridden(defaults: VariantDefaults, override: VariantOverride) -> VariantDefaults:
    """`defaults` with every value `override` sets."""
    values = {name: getattr(override, name) for name in DEFAULT_TYPES}
    return replace(defaults, **{k: v for k, v in values.items() if v is not None})


def check_defaults(values: Mapping[str, Any], where: str) -> None:
    """Raise ValueError naming `where.<key>` for a default no variant can draw with.

    `values` are drawing defaults of the right types, from variant.toml's [defaults] or a
    [variants.<name>] table of config.toml; a None value is "not set" and always fine.
    """
    scheduler = values.get("scheduler")
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise ValueError(f"{where}.scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    for side in ("width", "height"):
        if values.get(side) is not None and (values[side] < 8 or values[side] % 8):
            raise ValueError(f"{where}.{side} must be a positive multiple of 8, got {values[side]}")
    for limit in ("max_side", "max_pixels"):
        if values.get(limit) is not None and values[limit] < 0:
            raise ValueError(f"{where}.{limit} must be 0 (no limit of its own) or more, got {values[limit]}")
    for side in ("width", "height"):
        if values.get("max_side") and values.get(side) is not None and values[side] > values["max_side"]:
            raise ValueError(f"{where}.{side} ({values[side]}) is over {where}.max_side ({values['max_side']})")
    if values.get("strength") is not None and not 0.1 <= values["strength"] <= 1:
        raise ValueError(f"{where}.strength must be 0.1-1, got {values['strength']}")
    true_cfg = values.get("true_cfg")
    if true_cfg is not None and not (true_cfg == 0 or 1 < true_cfg <= 20):
        raise ValueError(f"{where}.true_cfg must be 0 (off) or above 1 (e.g. 4), up to 20, got {true_cfg}")
    if values.get("steps") is not None and values["steps"] < 1:
        raise ValueError(f"{where}.steps must be at least 1, got {values['steps']}")
    if values.get("fast_scheduler") is not None and values["fast_scheduler"] not in SCHEDULERS:
        raise ValueError(f"{where}.fast_scheduler must be one of {', '.join(SCHEDULERS)}, "
                         f"got {values['fast_scheduler']!r}")
    if values.get("fast_steps") is not None and not 0 <= values["fast_steps"] <= FAST_MAX_STEPS:
        raise ValueError(f"{where}.fast_steps must be 1 to {FAST_MAX_STEPS} (0: no fast mode), "
                         f"got {values['fast_steps']}")
    if values.get("fast_guidance") is not None and not 0 <= values["fast_guidance"] <= FAST_MAX_GUIDANCE:
        raise ValueError(f"{where}.fast_guidance must be 0 to {FAST_MAX_GUIDANCE:g}, got {values['fast_guidance']}")
