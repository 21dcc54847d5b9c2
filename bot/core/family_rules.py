"""What a model family cannot do, refused when a request is made, never silently ignored.

Each family module (bot/engine/families/) declares its traits; the model store hands them to the
core with the variant's defaults. A request for something the family does not have (a negative
prompt on a guidance-distilled model, (word:1.3) weights on a T5 or LLM text encoder, a sampler the
flow-matching families were not made for) is refused here with a message that names the family and
says what works instead. Sizes are not refused but snapped to the family's grid.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from bot.core.errors import UserError
from bot.core.prompt_syntax import strip_lora_tags
from bot.core.request import RequestOptions
from bot.models.variant import VariantDefaults

# (text:1.3): an explicit AUTOMATIC1111 weight. Plain brackets are read as text by encoders that
# have no weights, so only an explicit number is taken for a weight they cannot honour.
_EXPLICIT_WEIGHT = re.compile(r"(?<!\\)\([^()]*:\s*[+-]?(\d+(\.\d*)?|\.\d+)\s*\)")


def snap(value: float, step: int) -> int:
    """A side on the family's size grid: latents are 1/8 of the image and a transformer's patches
    may cover 2x2 latents, so sides are multiples of 8 or 16."""
    return max(step, int(round(value / step)) * step)


def check_family(model: str, defaults: VariantDefaults, options: RequestOptions, negative: str) -> None:
    """Refuse what `model`'s family cannot do; `negative` is the negative prompt the request will use."""
    family = defaults.family
    label = family.label
    if options.negative_prompt and not negative_prompt_works(defaults):
        # Only where true CFG could give it one is an admin's switch worth naming.
        raise UserError("family_no_negative" if family.true_cfg else "family_no_negative_ever", model=model,
                        family=label)
    if not family.prompt_weights and any(_EXPLICIT_WEIGHT.search(strip_lora_tags(text))
                                         for text in (options.prompt, negative)):
        raise UserError("family_no_weights", model=model, family=label)
    if options.scheduler is not None and options.scheduler not in family.schedulers:
        raise UserError("family_scheduler", model=model, family=label, got=options.scheduler,
                        allowed=", ".join(family.schedulers))
    if options.guidance is not None and family.guidance_kind == "none":
        raise UserError("family_no_guidance", model=model, family=label)
    if options.mask_image is not None and not family.inpaint:
        raise UserError("family_no_inpaint", family=label)
    if options.init_image is not None and not (family.img2img or options.mask_image is not None):
        raise UserError("family_no_img2img", family=label)
    if (options.loras or options.prompt and "<lora:" in options.prompt.lower()) and not family.loras:
        raise UserError("family_no_loras", model=model, family=label)


def check_guidance(model: str, defaults: VariantDefaults, options: RequestOptions, guidance: float) -> None:
    """A negative prompt the user gave needs guidance above the family's threshold to do anything."""
    family = defaults.family
    if options.negative_prompt and family.guidance_kind == "cfg" and guidance <= family.cfg_above:
        raise UserError("negative_needs_cfg", model=model, low=f"{family.cfg_above:g}", got=f"{guidance:g}")


def forge_guidance(options: RequestOptions, defaults: VariantDefaults) -> RequestOptions:
    """`options` with AUTOMATIC1111's and Forge's CFG scale and Distilled CFG Scale made its one
    guidance number, as Forge reads them for the family: a family that guides with CFG takes the
    CFG scale, a guidance-distilled one (FLUX.1 dev) the distilled scale, a family without guidance
    neither. There the CFG scale would be Forge's per-image true CFG, which a variant turns on here
    (true_cfg): it is left out, since every A1111 client sends one (webuiapi 7, unasked) and
    refusing it would shut those families out. The answer's infotext says what ran."""
    if options.cfg_scale is None and options.distilled_cfg_scale is None:
        return options
    kind = defaults.family.guidance_kind
    asked = options.cfg_scale if kind == "cfg" else options.distilled_cfg_scale if kind == "distilled" else None
    if asked is not None and options.guidance is not None and asked != options.guidance:
        raise UserError("flag_twice", flag="cfg")
    guidance = options.guidance if asked is None else asked
    return replace(options, guidance=guidance, cfg_scale=None, distilled_cfg_scale=None)


def negative_prompt_works(defaults: VariantDefaults) -> bool:
    """A negative prompt needs classifier-free guidance: the family's own, or true CFG switched on
    for a guidance-distilled model."""
    return defaults.family.negative_prompt or defaults.family.true_cfg and defaults.true_cfg > 1


def family_view(defaults: VariantDefaults) -> dict[str, Any]:
    """What a variant's family lets a user do, as every frontend shows it: decided here, so that a
    page greys out the negative prompt exactly where a request with one is refused."""
    family = defaults.family
    return {
        "name": family.name,
        "label": family.label,
        "native_size": family.native_size,
        "size_step": family.size_step,
        "negative_prompt": negative_prompt_works(defaults),
        "guidance": family.guidance_kind != "none",
        "guidance_kind": family.guidance_kind,
        "prompt_weights": family.prompt_weights,
        "loras": family.loras,
        "img2img": family.img2img,
        "inpaint": family.inpaint,
        # The family's own defaults (the variant's, which may differ, are its "defaults").
        "default_steps": family.steps,
        "default_guidance": family.guidance,
        "default_scheduler": family.scheduler,
        "schedulers": list(family.schedulers),
    }
