"""Short scheduler names -> diffusers schedulers built from the model's own scheduler config.

Building from the model's config keeps what the model was trained with (beta schedule,
prediction type such as SD 2.1's v-prediction, timestep spacing); only the sampling method changes.
"""

from __future__ import annotations

from typing import Any, Mapping

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from bot.models.variant import SCHEDULERS

# name -> (class, options on top of the model's config)
_TABLE: dict[str, tuple[type, dict[str, Any]]] = {
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpm++_karras": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "heun": (HeunDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
    "lcm": (LCMScheduler, {}),
}
assert set(_TABLE) == set(SCHEDULERS), "bot.models.variant.SCHEDULERS and this table must agree"


def make_scheduler(name: str, model_config: Mapping[str, Any]):
    cls, options = _TABLE[name]
    return cls.from_config(dict(model_config), **options)
