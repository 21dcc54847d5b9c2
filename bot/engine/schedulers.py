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
    FlowMatchEulerDiscreteScheduler,
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


# The flow-matching families (SD 3.5, FLUX, Z-Image, Qwen-Image) were trained for one sampler: their
# Euler, with the shift the model's scheduler config sets. Name -> the scheduler class.
_FLOW_TABLE: dict[str, type] = {"euler": FlowMatchEulerDiscreteScheduler}
FLOW_SCHEDULERS = tuple(_FLOW_TABLE)


def make_flow_scheduler(name: str, model_config: Mapping[str, Any]):
    return _FLOW_TABLE[name].from_config(dict(model_config))
