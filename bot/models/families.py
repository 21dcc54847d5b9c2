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

The diffusion transformers come as the transformer alone (their text encoders and VAE are separate
downloads), as `.safetensors` or as GGUF (quantized) files:

* FLUX.1 in Black Forest Labs' layout (`double_blocks.N.img_attn.qkv.weight`,
  `single_blocks.N.linear1.weight`, `img_in.weight`, ..., with the `model.diffusion_model.` prefix
  when ComfyUI saved it) or in the diffusers layout (`transformer_blocks.N.attn.to_q.weight` +
  `single_transformer_blocks.*`). dev is guidance-distilled: it has a guidance embedding
  (`guidance_in.*`, diffusers `time_text_embed.guidance_embedder.*`) that schnell lacks. A FLUX.1
  model whose input width differs from its output width is an image-conditioned one (Fill, Depth,
  Canny), which takes more than noise and is refused.
* SD 3 / 3.5 in Stability's MMDiT layout (`joint_blocks.N.x_block.attn.qkv.weight`,
  `x_embedder.proj.weight`) or in the diffusers `SD3Transformer2DModel` layout
  (`transformer_blocks.N.attn.add_q_proj.weight`, `pos_embed.proj.weight`, no single blocks).
  Large, medium and 3.0 medium are one family: the config folder tells their sizes apart.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

# Architecture name -> (role, native size). The names are variant.toml's `arch` values.
# The UNet families: one original-layout checkpoint holds the whole pipeline.
UNET_FAMILIES: dict[str, tuple[str, int]] = {
    "sd15": ("text2image", 512),
    "sd21": ("text2image", 512),
    "sd21-v": ("text2image", 768),
    "sdxl": ("text2image", 1024),
    "sdxl-refiner": ("refiner", 1024),
    "sd15-inpaint": ("inpainting", 512),
    "sd21-inpaint": ("inpainting", 512),
    "sdxl-inpaint": ("inpainting", 1024),
}
# The diffusion-transformer families: a file holds the transformer only.
TRANSFORMER_FAMILIES: dict[str, tuple[str, int]] = {
    "flux1-dev": ("text2image", 1024),
    "flux1-schnell": ("text2image", 1024),
    "sd3": ("text2image", 1024),
}
FAMILIES: dict[str, tuple[str, int]] = {**UNET_FAMILIES, **TRANSFORMER_FAMILIES}

CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
V_PRED_MARKER = "v_pred"
PREDICTION_METADATA = "modelspec.prediction_type"
# ComfyUI saves a diffusion model under the name its checkpoints give the UNet.
COMFY_PREFIX = "model.diffusion_model."
GGUF_ARCHITECTURE = "general.architecture"
_LONG_ARRAY = 64  # GGUF metadata arrays longer than this (an LLM's vocabulary) are only counted


@dataclass(frozen=True)
class _FluxLayout:
    """Where a FLUX.1 file of one key layout keeps what tells the families apart."""
    name: str
    required: tuple[str, ...]  # all FLUX.1 transformers have these (Chroma and FLUX.2 lack some)
    image_in: str  # the patch embedding: (hidden, input width)
    image_out: str  # the last projection: (output width, hidden)
    guidance: str  # only guidance-distilled models (dev) have it


FLUX_LAYOUTS = (
    _FluxLayout("Black Forest Labs",
                ("img_in.weight", "final_layer.linear.weight", "time_in.in_layer.weight",
                 "vector_in.in_layer.weight", "double_blocks.0.img_mod.lin.weight", "single_blocks.0.linear1.weight"),
                "img_in.weight", "final_layer.linear.weight", "guidance_in.in_layer.weight"),
    _FluxLayout("diffusers",
                ("x_embedder.weight", "proj_out.weight", "time_text_embed.timestep_embedder.linear_1.weight",
                 "time_text_embed.text_embedder.linear_1.weight", "transformer_blocks.0.norm1.linear.weight",
                 "single_transformer_blocks.0.norm.linear.weight"),
                "x_embedder.weight", "proj_out.weight", "time_text_embed.guidance_embedder.linear_1.weight"),
)
# A tensor name that marks a transformer layout -> (family or FLUX.1 layout, the other names it needs),
# tried in order: a diffusers FLUX.1 file has SD 3's marker too, so FLUX.1 goes first.
TRANSFORMER_MARKERS: tuple[tuple[str, str | _FluxLayout, tuple[str, ...]], ...] = (
    ("double_blocks.0.img_attn.qkv.weight", FLUX_LAYOUTS[0], ()),
    ("single_transformer_blocks.0.attn.to_q.weight", FLUX_LAYOUTS[1], ("transformer_blocks.0.attn.to_q.weight",)),
    ("joint_blocks.0.x_block.attn.qkv.weight", "sd3", ("x_embedder.proj.weight", "final_layer.linear.weight")),
    ("transformer_blocks.0.attn.add_q_proj.weight", "sd3", ("pos_embed.proj.weight", "context_embedder.weight",
                                                            "time_text_embed.text_embedder.linear_1.weight")),
)


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


def read_gguf_header(path: str | Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor name -> shape, and the key-value metadata as text (`general.architecture`, ...), of a
    GGUF file. The file is memory-mapped, so no weight is read. Shapes are in torch order (GGUF
    lists a tensor's dimensions innermost first) and count elements, not the bytes a quantized
    tensor takes, so they compare with a `.safetensors` file's."""
    name = Path(path).name
    # Imported here: only GGUF files need numpy and gguf (which loads no torch).
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ValueError(f"{name}: reading GGUF files needs the gguf package: pip install 'imagebot[gguf]'") from None
    if not Path(path).is_file():
        raise FileNotFoundError(path)
    try:
        reader = GGUFReader(str(path), "r")
    except (ValueError, IndexError, TypeError) as error:  # what a wrong magic or a cut-off header raises
        raise ValueError(f"{name} is not a GGUF file ({error})") from None
    shapes = {tensor.name: tuple(int(d) for d in reversed(tensor.shape.tolist())) for tensor in reader.tensors}
    metadata = {key: _gguf_text(field) for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    return shapes, metadata


def _gguf_text(field: Any) -> str:
    from gguf import GGUFValueType

    if field.types and field.types[0] == GGUFValueType.ARRAY and len(field.data) > _LONG_ARRAY:
        return f"[{len(field.data)} values]"
    value = field.contents()
    return ", ".join(str(item) for item in value) if isinstance(value, list) else str(value)


def detect_file_family(path: str | Path) -> str:
    """The architecture name of a `.safetensors` or `.gguf` file, from its header alone."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gguf":
        return detect_family(*read_gguf_header(path))
    if suffix == ".safetensors":
        return detect_family(*read_safetensors_header(path))
    raise ValueError(f"{path.name}: only .safetensors and .gguf files can be recognised from their header "
                     f"(got a {suffix or 'suffix-less'} file)")


def detect_family(shapes: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> str:
    """The architecture name (a key of FAMILIES) of a single-file model: an original-layout (LDM)
    Stable Diffusion checkpoint, or a FLUX.1 or SD 3 transformer in either of its layouts.

    `shapes` maps tensor name -> shape (a tuple, or anything with `.shape`). Raises ValueError
    naming what was found and what is supported.
    """
    metadata = metadata or {}
    supported = ", ".join(FAMILIES)
    transformer = _transformer_family(shapes)
    if transformer is not None:
        return transformer
    if CONV_IN not in shapes:
        raise ValueError(f"not a model this project knows: {_describe(shapes, metadata)}, and neither a Stable "
                         f"Diffusion UNet ({CONV_IN}) nor a FLUX.1 or SD 3 transformer; "
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


def _transformer_family(shapes: Mapping[str, Any]) -> str | None:
    """The family of a FLUX.1 or SD 3 transformer file ("flux1-dev", "flux1-schnell", "sd3"), else None."""
    names = {key.removeprefix(COMFY_PREFIX): value for key, value in shapes.items()}
    for marker, family, needed in TRANSFORMER_MARKERS:
        if marker in names and all(name in names for name in needed):
            return _flux_family(names, family) if isinstance(family, _FluxLayout) else family
    return None


def _flux_family(names: Mapping[str, Any], layout: _FluxLayout) -> str:
    supported = ", ".join(FAMILIES)
    missing = [name for name in layout.required if name not in names]
    if missing:
        raise ValueError(f"a Flux-style transformer ({layout.name} layout) without {missing[0]}: not FLUX.1 dev or "
                         f"schnell (other Flux-derived models, such as Chroma or FLUX.2, are not supported); "
                         f"supported architectures: {supported}")
    width_in = _shape(names[layout.image_in])[-1]
    width_out = _shape(names[layout.image_out])[0]
    if width_in != width_out:
        raise ValueError(f"a FLUX.1 transformer taking {width_in} input channels for {width_out} output ones: an "
                         "image-conditioned model (Fill, Depth, Canny), which this project cannot run; "
                         f"supported architectures: {supported}")
    return "flux1-dev" if layout.guidance in names else "flux1-schnell"


def _describe(shapes: Mapping[str, Any], metadata: Mapping[str, str]) -> str:
    """What a file holds, in a few words: its tensor count and the most common first name parts."""
    architecture = metadata.get(GGUF_ARCHITECTURE)
    said = f" (its metadata says {GGUF_ARCHITECTURE} = {architecture!r})" if architecture else ""
    if not shapes:
        return f"the file holds no tensors{said}"
    groups = Counter(key.removeprefix(COMFY_PREFIX).split(".")[0] for key in shapes)
    common = ", ".join(f"{group}.* ({count})" for group, count in groups.most_common(4))
    more = ", ..." if len(groups) > 4 else ""
    count = f"{len(shapes)} tensor" + ("s" if len(shapes) != 1 else "")
    return f"found {count} named {common}{more}{said}"


def _says_epsilon(shapes: Mapping[str, Any], metadata: Mapping[str, str]) -> bool:
    if V_PRED_MARKER in shapes:
        return False
    return metadata.get(PREDICTION_METADATA, "").strip().lower() in ("epsilon", "eps")


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)
