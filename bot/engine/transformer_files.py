"""Offline loading of a diffusion transformer from one file: FLUX.1 (dev, schnell) and SD 3 / 3.5.

What users download for these families is the transformer alone, in one of:

* ``.safetensors`` in the original layout (Black Forest Labs' for FLUX.1, Stability's MMDiT for
  SD 3.5), with or without the ``model.diffusion_model.`` prefix ComfyUI adds, or in the diffusers
  layout saved as one file;
* ``.gguf``, the same original-layout tensors quantized block-wise (Q8_0, Q4_0, Q4_K, ...), kept
  quantized in memory and dequantized layer by layer as the model runs.

The architecture (layer counts, widths) comes from a local diffusers pipeline folder holding
``transformer/config.json``, never from the hub. Both layouts are turned into diffusers' names
before ``from_single_file`` sees them, so the tensors can be checked against the config first: a
file of another size or family is refused with its name and the first mismatch, where diffusers
would leave missing weights unset or drop extra ones with a warning.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from bot.models.families import COMFY_PREFIX, TRANSFORMER_FAMILIES, detect_file_family

TRANSFORMER_CLASSES = {
    "flux1-dev": "FluxTransformer2DModel",
    "flux1-schnell": "FluxTransformer2DModel",
    "sd3": "SD3Transformer2DModel",
}
SUFFIXES = (".safetensors", ".gguf")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

# FLUX.1 names, Black Forest Labs' -> diffusers'. A key maps a module (its weight and bias follow)
# or a whole tensor name. Within a block, the names are those after `double_blocks.N.` /
# `transformer_blocks.N.` and `single_blocks.N.` / `single_transformer_blocks.N.`.
FLUX_RENAMED = {
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder",
    "img_in": "x_embedder",
    "final_layer.linear": "proj_out",
}
FLUX_DOUBLE_RENAMED = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
}
FLUX_SINGLE_RENAMED = {
    "modulation.lin": "norm.linear",
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
    "linear2": "proj_out",
}
# One original projection computes several diffusers ones, stacked along the output rows: each
# part is `hidden` rows wide except the last, which takes the rest (the MLP of a single block).
FLUX_DOUBLE_FUSED = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
FLUX_SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
# The original final norm's projection gives (shift, scale), diffusers' (scale, shift).
FLUX_SWAPPED = {"final_layer.adaLN_modulation.1": "norm_out.linear"}
FLUX_BLOCKS = {  # original block list -> (diffusers block list, renamed, fused)
    "double_blocks": ("transformer_blocks", FLUX_DOUBLE_RENAMED, FLUX_DOUBLE_FUSED),
    "single_blocks": ("single_transformer_blocks", FLUX_SINGLE_RENAMED, FLUX_SINGLE_FUSED),
}
_BLOCK = re.compile(r"(double_blocks|single_blocks)\.(\d+)\.(.+)")


def load_transformer(path: str | Path, arch: str, config_folder: str | Path,
                     torch_dtype: torch.dtype = torch.float32, *, config_name: str | None = None) -> torch.nn.Module:
    """The diffusers transformer of ``arch`` (a key of TRANSFORMER_CLASSES) with the weights of one
    ``.safetensors`` or ``.gguf`` file, without touching the network.

    ``config_folder`` is a diffusers pipeline folder with ``transformer/config.json`` (weights not
    needed). A ``.gguf`` file stays quantized (``GGUFQuantizationConfig``), computing in
    ``torch_dtype``; a ``.safetensors`` one is cast to ``torch_dtype``. Raises ValueError naming
    the file and the problem: a pickle, a missing config, a file of another family or size;
    ``config_name`` is how those messages name the config folder (by default its path).
    """
    import diffusers

    path, folder = Path(path), Path(config_folder)
    _check_file(path, arch)
    _check_config(folder, arch, config_name or f"the config folder {folder}")
    try:
        found = detect_file_family(path)
    except ValueError as error:
        raise ValueError(f"{path.name}: {error}") from None
    if found != arch:
        raise ValueError(f"{path.name} holds a {found} transformer, not {arch}")
    model_class = getattr(diffusers, TRANSFORMER_CLASSES[arch])
    try:
        checkpoint = _to_diffusers(_read_weights(path), arch)
    except (ValueError, KeyError) as error:  # diffusers' SD 3 conversion pops what it expects
        raise ValueError(f"{path.name} is not a complete {arch} transformer: {error}") from None
    _check_fits(checkpoint, model_class, folder, path, config_name or str(folder))
    options: dict[str, Any] = {}
    if path.suffix.lower() == ".gguf":
        options["quantization_config"] = diffusers.GGUFQuantizationConfig(compute_dtype=torch_dtype)
    return model_class.from_single_file(checkpoint, config=str(folder), subfolder="transformer",
                                        torch_dtype=torch_dtype, local_files_only=True, **options)


def _check_file(path: Path, arch: str) -> None:
    if arch not in TRANSFORMER_CLASSES:
        raise ValueError(f"{path.name}: {arch!r} is not a transformer architecture; "
                         f"supported: {', '.join(TRANSFORMER_FAMILIES)}")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ValueError(f"{path.name} is a pickle, which can run arbitrary code when loaded; "
                         "a transformer is loaded from .safetensors or .gguf only")
    if suffix not in SUFFIXES:
        raise ValueError(f"{path.name}: a transformer file must be .safetensors or .gguf")
    if not path.is_file():
        raise ValueError(f"{path.name}: no such file ({path})")
    if suffix == ".gguf" and importlib.util.find_spec("gguf") is None:
        raise ValueError(f"{path.name}: loading GGUF files needs the gguf package: pip install 'imagebot[gguf]'")


def _check_config(folder: Path, arch: str, label: str) -> None:
    """The config folder (``label`` in messages) has a transformer/config.json, of ``arch``."""
    file = folder / "transformer" / "config.json"
    # A folder that is not there would be taken for a hub repository id by diffusers.
    if not file.is_file():
        raise ValueError(f"no transformer/config.json in {label} "
                         f"(a diffusers pipeline folder with the {arch} transformer's config)")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{file} is not valid JSON: {error}") from None
    expected = TRANSFORMER_CLASSES[arch]
    if config.get("_class_name") != expected:
        raise ValueError(f"{label} describes a {config.get('_class_name')}, "
                         f"not the {expected} of {arch}")
    if arch.startswith("flux1-") and bool(config.get("guidance_embeds")) != (arch == "flux1-dev"):
        which = "dev (with a guidance embedding)" if config.get("guidance_embeds") else "schnell (no guidance embedding)"
        raise ValueError(f"{label} describes FLUX.1 {which}, not {arch}")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the file; GGUF ones quantized (diffusers' GGUFParameter), as diffusers reads them."""
    from diffusers.loaders.single_file_utils import load_single_file_checkpoint

    return load_single_file_checkpoint(str(path), local_files_only=True)


def _to_diffusers(checkpoint: Mapping[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """The transformer's tensors under diffusers' names, whichever layout the file has."""
    prefixed = {key.removeprefix(COMFY_PREFIX): value for key, value in checkpoint.items() if key.startswith(COMFY_PREFIX)}
    # A ComfyUI checkpoint may hold the VAE and text encoders too, outside the prefix.
    weights = prefixed or dict(checkpoint)
    if arch.startswith("flux1-"):
        return flux_to_diffusers(weights) if "img_in.weight" in weights else weights
    if "x_embedder.proj.weight" in weights:
        from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

        return convert_sd3_transformer_checkpoint_to_diffusers(weights)
    return weights


def flux_to_diffusers(checkpoint: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """FLUX.1 weights in Black Forest Labs' layout (no prefix) -> diffusers' FluxTransformer2DModel names.

    What diffusers' ``convert_flux_transformer_checkpoint_to_diffusers`` does, with the hidden size
    read from the weights: diffusers assumes the released models' 3072, so smaller models of the
    same architecture would not split. Only rows are split and joined, which a quantized GGUF
    tensor allows (its blocks run along each row). Raises ValueError for a tensor FLUX.1 has not.
    """
    hidden = checkpoint["img_in.weight"].shape[0]
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in checkpoint.items():
        converted.update(_flux_tensor_to_diffusers(key, tensor, hidden))
    return converted


def _flux_tensor_to_diffusers(key: str, tensor: torch.Tensor, hidden: int) -> Iterator[tuple[str, torch.Tensor]]:
    block = _BLOCK.fullmatch(key)
    if block is None:
        module, _, param = key.rpartition(".")
        if module in FLUX_SWAPPED:
            shift, scale = tensor.chunk(2, dim=0)
            yield f"{FLUX_SWAPPED[module]}.{param}", torch.cat([scale, shift], dim=0)
        else:
            yield renamed(key, FLUX_RENAMED), tensor
        return
    kind, index, tail = block.groups()
    blocks, renames, fused = FLUX_BLOCKS[kind]
    module, _, param = tail.rpartition(".")
    if module in fused:
        parts = fused[module]
        sizes = [hidden] * (len(parts) - 1) + [tensor.shape[0] - hidden * (len(parts) - 1)]
        for part, rows in zip(parts, torch.split(tensor, sizes, dim=0)):
            yield f"{blocks}.{index}.{part}.{param}", rows
    else:
        yield f"{blocks}.{index}.{renamed(tail, renames, key)}", tensor


def renamed(name: str, table: Mapping[str, str], full_name: str | None = None) -> str:
    """``name`` with the first entry of ``table`` that is it, or the module it belongs to, replaced."""
    for old, new in table.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    raise ValueError(f"unexpected tensor {full_name or name}")


def _check_fits(checkpoint: Mapping[str, torch.Tensor], model_class: Any, folder: Path, path: Path,
                label: str) -> None:
    """The file's tensors are the config's (in ``folder``, ``label`` in messages), name for name and
    shape for shape (quantized ones by the shape they decode to)."""
    from accelerate import init_empty_weights

    with init_empty_weights():  # meta device: names and shapes, no memory
        model = model_class.from_config(model_class.load_config(str(folder), subfolder="transformer",
                                                                local_files_only=True))
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    found = {name: tuple(getattr(tensor, "quant_shape", tensor.shape)) for name, tensor in checkpoint.items()}
    where = f"{path.name} does not fit the transformer config in {label}"
    if missing := sorted(expected.keys() - found.keys()):
        raise ValueError(f"{where}: {len(missing)} tensors missing, such as {missing[0]}")
    if extra := sorted(found.keys() - expected.keys()):
        raise ValueError(f"{where}: {len(extra)} tensors the config has not, such as {extra[0]}")
    for name, shape in expected.items():
        if found[name] != shape:
            raise ValueError(f"{where}: {name} is {list(found[name])} in the file, {list(shape)} in the config")


def load_transformer_pipeline(spec, dtype: torch.dtype):
    """A transformer-only variant as a pipeline: its transformer from its file, the rest (text
    encoders, VAE, tokenizers, scheduler) from the pipeline folder of its `components` variant."""
    from diffusers import DiffusionPipeline

    if spec.components_dir is None:
        raise ValueError(f"{spec.file.name} holds only a transformer and no components variant is usable")
    arch = spec.arch if spec.arch != "auto" else detect_file_family(spec.file)
    # Messages name the variant the admin wrote in variant.toml, not a path on the server.
    transformer = load_transformer(spec.file, arch, spec.components_dir, dtype,
                                   config_name=f"the components variant '{spec.components}'")
    return DiffusionPipeline.from_pretrained(str(spec.components_dir), transformer=transformer, torch_dtype=dtype,
                                             local_files_only=True)
