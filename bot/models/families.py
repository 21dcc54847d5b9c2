"""Which model family a single-file checkpoint belongs to, from its tensor names and shapes alone.

Torch-free: the model store reads a `.safetensors` header (JSON) to list a variant with its native
size and role, and the engine picks the architecture configs with the same answer. Detection goes
by structure, not by the sizes of the published models, so small and large models of a family are
told apart the same way:

* the text encoder: `cond_stage_model.transformer.*` (CLIP, SD 1.x), `cond_stage_model.model.*`
  (OpenCLIP, SD 2.x), `conditioner.embedders.0.transformer.*` + `conditioner.embedders.1.model.*`
  (CLIP + OpenCLIP-bigG, SDXL base), `conditioner.embedders.0.model.*` alone (SDXL refiner);
* the UNet's input channels (`input_blocks.0.0.weight`): 4 draws from noise, 9 inpaints
  (noise latents + mask + masked image latents).

SD 2.x base (epsilon) and SD 2.x-v (v-prediction) have the same tensors. What the file says
decides: the Stability model-spec metadata (`modelspec.prediction_type` = "v" or "epsilon", as
this project's exporter and Stability's tools write) or ComfyUI's `v_pred` marker tensor; a file
that says nothing is taken for v-prediction, what the 768 px SD 2.x releases are (2.0-v, 2.1-v),
and `arch = "sd21"` in variant.toml says otherwise. SD 2.x inpainting is always epsilon.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

# Architecture name -> (role, native size). The names are variant.toml's `arch` values.
FAMILIES: dict[str, tuple[str, int]] = {
    "sd15": ("text2image", 512),
    "sd21": ("text2image", 512),
    "sd21-v": ("text2image", 768),
    "sdxl": ("text2image", 1024),
    "sdxl-refiner": ("refiner", 1024),
    "sd15-inpaint": ("inpainting", 512),
    "sd21-inpaint": ("inpainting", 512),
    "sdxl-inpaint": ("inpainting", 1024),
}

CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
V_PRED_MARKER = "v_pred"
PREDICTION_METADATA = "modelspec.prediction_type"


def read_safetensors_header(path: str | Path,
                            limit: int = 64 * 1024 * 1024) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor name -> shape, and the metadata, of a `.safetensors` file (its JSON header only)."""
    with open(path, "rb") as stream:
        length = int.from_bytes(stream.read(8), "little")
        if not 0 < length <= limit:
            raise ValueError(f"{Path(path).name} is not a .safetensors file (header length {length})")
        header = json.loads(stream.read(length))
    if not isinstance(header, dict):
        raise ValueError(f"{Path(path).name} is not a .safetensors file")
    metadata = header.pop("__metadata__", None) or {}
    shapes = {key: tuple(value.get("shape", ())) for key, value in header.items() if isinstance(value, dict)}
    return shapes, {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def detect_family(shapes: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> str:
    """The architecture name (a key of FAMILIES) of an original-layout (LDM) checkpoint.

    `shapes` maps tensor name -> shape (a tuple, or anything with `.shape`). Raises ValueError
    naming what was found and what is supported.
    """
    metadata = metadata or {}
    supported = ", ".join(FAMILIES)
    if CONV_IN not in shapes:
        raise ValueError(f"not a Stable Diffusion checkpoint: no UNet ({CONV_IN}) among its {len(shapes)} tensors; "
                         f"supported architectures: {supported}")
    conv_in = _shape(shapes[CONV_IN])
    channels = conv_in[1] if len(conv_in) == 4 else None
    if channels not in (4, 9):
        raise ValueError(f"the UNet takes {channels} input channels; Stable Diffusion models take 4 "
                         f"(or 9 for inpainting); supported architectures: {supported}")
    inpainting = channels == 9

    def has(prefix: str) -> bool:
        return any(key.startswith(prefix) for key in shapes)

    if has("conditioner.embedders.1.model."):
        family = "sdxl"
    elif has("conditioner.embedders.0.model."):
        if inpainting:
            raise ValueError("an SDXL refiner with 9 input channels is not a known model; "
                             f"supported architectures: {supported}")
        return "sdxl-refiner"
    elif has("cond_stage_model.model."):
        family = "sd21" if inpainting or _says_epsilon(shapes, metadata) else "sd21-v"
    elif has("cond_stage_model.transformer."):
        family = "sd15"
    else:
        raise ValueError("found a UNet but no text encoder this project knows (CLIP or OpenCLIP in the original "
                         f"layout); supported architectures: {supported}")
    if inpainting:
        return {"sd15": "sd15-inpaint", "sd21": "sd21-inpaint", "sdxl": "sdxl-inpaint"}[family]
    return family


def _says_epsilon(shapes: Mapping[str, Any], metadata: Mapping[str, str]) -> bool:
    if V_PRED_MARKER in shapes:
        return False
    return metadata.get(PREDICTION_METADATA, "").strip().lower() in ("epsilon", "eps")


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)
