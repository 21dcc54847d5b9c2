"""Tiny FLUX.1 and SD 3.5 transformers, and writers of the files users download for them: one
`.safetensors` in the original layout (Black Forest Labs' for FLUX.1, Stability's MMDiT for SD 3),
and GGUF files laid out as model sites ship them.

`flux_to_original` and `sd3_to_original` undo exactly what diffusers' loaders do
(`convert_flux_transformer_checkpoint_to_diffusers`, `convert_sd3_transformer_checkpoint_to_diffusers`):
renames, the q/k/v (and, in FLUX.1 single blocks, MLP) projections stacked back into one, and the
final norm's (scale, shift) halves put back in the original (shift, scale) order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

from bot.engine.transformer_files import FLUX_BLOCKS, FLUX_RENAMED, FLUX_SWAPPED, renamed
from tests.helpers.transformer_headers import write_gguf

Tensors = dict[str, torch.Tensor]

# GGUF types the gguf package can write and diffusers reads back (K-quants it cannot write).
GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
GGUF_FILE_TYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q8_0": "MOSTLY_Q8_0",
                   "Q5_1": "MOSTLY_Q5_1", "Q5_0": "MOSTLY_Q5_0", "Q4_1": "MOSTLY_Q4_1", "Q4_0": "MOSTLY_Q4_0"}
GGUF_ARCHITECTURES = {"FluxTransformer2DModel": "flux", "SD3Transformer2DModel": "sd3"}
# As the published FLUX.1 GGUF files have it: the input and output layers stay in F32 (they are
# small and quantizing them costs the most quality), and so does every tensor that is not a matrix.
GGUF_FULL_PRECISION = ("img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer.",
                       "x_embedder.", "t_embedder.", "y_embedder.", "context_embedder.", "pos_embed")

# SD 3 names, Stability's MMDiT -> diffusers' (modules, or whole tensor names).
SD3_RENAMED = {
    "pos_embed": "pos_embed.pos_embed",
    "x_embedder.proj": "pos_embed.proj",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "context_embedder": "context_embedder",
    "final_layer.linear": "proj_out",
}
# Within `joint_blocks.N.` / `transformer_blocks.N.`.
SD3_BLOCK_RENAMED = {
    "x_block.attn.ln_q": "attn.norm_q",
    "x_block.attn.ln_k": "attn.norm_k",
    "context_block.attn.ln_q": "attn.norm_added_q",
    "context_block.attn.ln_k": "attn.norm_added_k",
    "x_block.attn.proj": "attn.to_out.0",
    "context_block.attn.proj": "attn.to_add_out",
    "x_block.attn2.ln_q": "attn2.norm_q",
    "x_block.attn2.ln_k": "attn2.norm_k",
    "x_block.attn2.proj": "attn2.to_out.0",
    "x_block.adaLN_modulation.1": "norm1.linear",
    "context_block.adaLN_modulation.1": "norm1_context.linear",
    "x_block.mlp.fc1": "ff.net.0.proj",
    "x_block.mlp.fc2": "ff.net.2",
    "context_block.mlp.fc1": "ff_context.net.0.proj",
    "context_block.mlp.fc2": "ff_context.net.2",
}
SD3_BLOCK_FUSED = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
}


# --------------------------------------------------------------------------- tiny models


def tiny_flux(guidance: bool = True, seed: int = 0, **sizes) -> FluxTransformer2DModel:
    """FLUX.1 dev (guidance embedding) or schnell, as small as diffusers' own tests make it; every
    matrix is 32 or more columns wide, so most can be block-quantized."""
    torch.manual_seed(seed)
    config = dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                  num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8))
    return FluxTransformer2DModel(**{**config, **sizes}, guidance_embeds=guidance).eval()


def tiny_sd3(seed: int = 0, **sizes) -> SD3Transformer2DModel:
    """SD 3.5 medium in miniature: q/k normalisation, a second image attention in block 0, and two
    blocks, so that the last (whose text stream ends early) differs from the others."""
    torch.manual_seed(seed)
    config = dict(sample_size=8, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8,
                  num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64,
                  out_channels=4, pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm")
    return SD3Transformer2DModel(**{**config, **sizes}).eval()


def flux_inputs(model: FluxTransformer2DModel, seed: int = 0, side: int = 4, text: int = 8) -> dict[str, torch.Tensor]:
    """A fixed input for a tiny FLUX.1 transformer: packed latents, text states, ids, timestep."""
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        "hidden_states": torch.randn(1, side * side, config.in_channels, generator=generator),
        "encoder_hidden_states": torch.randn(1, text, config.joint_attention_dim, generator=generator),
        "pooled_projections": torch.randn(1, config.pooled_projection_dim, generator=generator),
        "img_ids": torch.randn(side * side, 3, generator=generator),
        "txt_ids": torch.zeros(text, 3),
        "timestep": torch.tensor([0.5]),
    }
    if config.guidance_embeds:
        inputs["guidance"] = torch.tensor([3.5])
    return inputs


def sd3_inputs(model: SD3Transformer2DModel, seed: int = 0, side: int = 8, text: int = 8) -> dict[str, torch.Tensor]:
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(1, config.in_channels, side, side, generator=generator),
        "encoder_hidden_states": torch.randn(1, text, config.joint_attention_dim, generator=generator),
        "pooled_projections": torch.randn(1, config.pooled_projection_dim, generator=generator),
        "timestep": torch.tensor([500]),
    }


def run(model: torch.nn.Module) -> torch.Tensor:
    """The model's output on its fixed input."""
    inputs = flux_inputs(model) if isinstance(model, FluxTransformer2DModel) else sd3_inputs(model)
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


# --------------------------------------------------------------------------- diffusers -> original


def _block_count(state_dict: Mapping[str, torch.Tensor], blocks: str) -> int:
    return len({key.split(".")[1] for key in state_dict if key.startswith(blocks + ".")})


def _swapped(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _unfuse(source: Tensors, target: Tensors, fused: Mapping[str, tuple[str, ...]], old: str, new: str) -> None:
    """Stack back each group of diffusers projections (prefix `new`) into one original one (prefix `old`)."""
    for original, parts in fused.items():
        for param in ("weight", "bias"):
            names = [f"{new}{part}.{param}" for part in parts]
            if all(name in source for name in names):
                target[f"{old}{original}.{param}"] = torch.cat([source.pop(name) for name in names], dim=0)


def _rename_rest(source: Tensors, target: Tensors, table: Mapping[str, str], old: str = "", new: str = "") -> None:
    inverse = {diffusers: original for original, diffusers in table.items()}
    for key in [key for key in source if key.startswith(new)]:
        target[old + renamed(key[len(new):], inverse, key)] = source.pop(key)


def flux_to_original(state_dict: Mapping[str, torch.Tensor]) -> Tensors:
    """A diffusers FluxTransformer2DModel state dict in Black Forest Labs' layout (no prefix)."""
    source, original = dict(state_dict), {}
    for old_blocks, (new_blocks, renames, fused) in FLUX_BLOCKS.items():
        for i in range(_block_count(source, new_blocks)):
            old, new = f"{old_blocks}.{i}.", f"{new_blocks}.{i}."
            _unfuse(source, original, fused, old, new)
            _rename_rest(source, original, renames, old, new)
    for old_module, new_module in FLUX_SWAPPED.items():
        for param in ("weight", "bias"):
            original[f"{old_module}.{param}"] = _swapped(source.pop(f"{new_module}.{param}"))
    _rename_rest(source, original, FLUX_RENAMED)
    return original


def sd3_to_original(state_dict: Mapping[str, torch.Tensor]) -> Tensors:
    """A diffusers SD3Transformer2DModel state dict in Stability's MMDiT layout (no prefix)."""
    source, original = dict(state_dict), {}
    depth = _block_count(source, "transformer_blocks")
    for i in range(depth):
        old, new = f"joint_blocks.{i}.", f"transformer_blocks.{i}."
        if i == depth - 1:  # the last block's text stream only modulates: its norm is a final norm
            for param in ("weight", "bias"):
                original[f"{old}context_block.adaLN_modulation.1.{param}"] = _swapped(
                    source.pop(f"{new}norm1_context.linear.{param}"))
        _unfuse(source, original, SD3_BLOCK_FUSED, old, new)
        _rename_rest(source, original, SD3_BLOCK_RENAMED, old, new)
    for param in ("weight", "bias"):
        original[f"final_layer.adaLN_modulation.1.{param}"] = _swapped(source.pop(f"norm_out.linear.{param}"))
    _rename_rest(source, original, SD3_RENAMED)
    return original


def to_original(transformer: torch.nn.Module) -> Tensors:
    state_dict = {name: tensor.detach() for name, tensor in transformer.state_dict().items()}
    if isinstance(transformer, FluxTransformer2DModel):
        return flux_to_original(state_dict)
    if isinstance(transformer, SD3Transformer2DModel):
        return sd3_to_original(state_dict)
    raise TypeError(f"no original layout known for {type(transformer).__name__}")


# --------------------------------------------------------------------------- files


def save_original_safetensors(transformer: torch.nn.Module, path: str | Path, prefix: str = "") -> Path:
    """The transformer as one `.safetensors` file in its original layout; ComfyUI's exports use
    `prefix="model.diffusion_model."`."""
    from safetensors.torch import save_file

    save_file({prefix + name: tensor.contiguous() for name, tensor in to_original(transformer).items()}, str(path))
    return Path(path)


def save_gguf(transformer: torch.nn.Module, path: str | Path, qtype: str = "F32") -> Path:
    """The transformer as a GGUF file the way the published FLUX.1 / SD 3.5 ones are made: original
    tensor names (no prefix), `general.architecture` "flux" or "sd3", matrices in `qtype` and
    everything else (and a matrix whose rows do not split into whole blocks) in F32."""
    if qtype not in GGUF_TYPES:
        raise ValueError(f"cannot write GGUF type {qtype!r}; supported: {', '.join(GGUF_TYPES)}")
    arrays = ((name, tensor.float().cpu().numpy())  # numpy (torch) dimension order: the writer reverses it
              for name, tensor in to_original(transformer).items())
    return write_gguf(Path(path), GGUF_ARCHITECTURES[type(transformer).__name__], arrays, qtype,
                      keep_f32=lambda name: name.startswith(GGUF_FULL_PRECISION), file_type=GGUF_FILE_TYPES[qtype])
