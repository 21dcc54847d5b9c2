"""Export a diffusers Stable Diffusion 1.x pipeline as one original-layout ``.safetensors`` file.

AUTOMATIC1111, ComfyUI, Forge and friends load "single-file" checkpoints in the key layout of the
original CompVis/LDM code (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.*``), not diffusers folders. This module renames the keys of a
diffusers UNet, VAE and CLIP text encoder into that layout; diffusers' own ``from_single_file``
(and ``bot.engine.single_file.load_single_file``) reads the result back.

It follows diffusers' ``scripts/convert_diffusers_to_original_stable_diffusion.py``, with one
difference: that script hard-codes SD 1.5's shape (4 levels x 2 layers, attention in the first 3
down levels). Here the LDM block numbers are computed from the model's config and the attention
layers from the keys that are really there, so smaller models (the tiny test pipelines, 2 levels)
come out right too. Any key this does not know how to place is an error, not silently dropped.

Only SD 1.x-style pipelines are supported: a CLIP (OpenAI ViT-L style, ``quick_gelu``) text
encoder stored as ``cond_stage_model.transformer.text_model.*``. SD 2.x keeps an OpenCLIP text
encoder under a different layout (fused q/k/v), and SDXL has two text encoders; both are refused.

    python -m training.to_single_file PIPELINE_DIR OUT.safetensors [--half]
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bot.models.atomic import write_file_atomic

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."

# ---------------------------------------------------------------------------------------------
# UNet
# ---------------------------------------------------------------------------------------------

# Top-level layers: (diffusers module, LDM module).
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    # SDXL-style micro-conditioning embedding; harmless for SD 1.x, which has none.
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}

# Inside a ResBlock the layers have different names; the rest of the key is unchanged.
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
# Transformer2DModel (norm, proj_in, transformer_blocks.*, proj_out) has the same names as the
# LDM SpatialTransformer, so attention keys only need their block prefix changed.

_BLOCK_KEY = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$")
_MID_KEY = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def _rename_resnet(rest: str) -> str:
    layer, _, tail = rest.partition(".")
    if layer not in _UNET_RESNET:
        raise ValueError(f"unknown ResBlock layer {layer!r}")
    return f"{_UNET_RESNET[layer]}.{tail}"


def _per_block(value: Any, n: int) -> list[int]:
    """layers_per_block may be one int or one per level."""
    return [int(value)] * n if isinstance(value, int) else [int(v) for v in value]


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel keys -> LDM ``openaimodel.UNetModel`` keys (no prefix)."""
    n_levels = len(config["down_block_types"])
    down_layers = _per_block(config["layers_per_block"], n_levels)
    # diffusers' up blocks run the levels in reverse, each with one ResBlock more (the extra one
    # takes the skip connection of the level's downsampler / conv_in).
    up_layers = [n + 1 for n in reversed(down_layers)]

    # LDM numbers input_blocks / output_blocks sequentially across levels: input_blocks.0 is
    # conv_in, then each level's layers, then (except after the last level) a Downsample block.
    # For SD 1.5 (2 layers) this gives the familiar 3*i + j + 1 and 3*(i + 1).
    input_index: dict[tuple[int, int], int] = {}
    downsample_index: dict[int, int] = {}
    n = 1
    for i, layers in enumerate(down_layers):
        for j in range(layers):
            input_index[i, j] = n
            n += 1
        if i < n_levels - 1:
            downsample_index[i] = n
            n += 1
    output_index: dict[tuple[int, int], int] = {}
    n = 0
    for i, layers in enumerate(up_layers):
        for j in range(layers):
            output_index[i, j] = n
            n += 1

    # The Upsample sits after the ResBlock (and SpatialTransformer, if the level has one) of the
    # level's last output block: output_blocks.N.1.conv or output_blocks.N.2.conv.
    up_has_attention = {int(k.split(".")[1]) for k in state_dict if k.startswith("up_blocks.") and ".attentions." in k}
    mid_has_attention = any(k.startswith("mid_block.attentions.") for k in state_dict)

    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        new = None
        module, _, param = key.rpartition(".")
        if module in _UNET_TOP:
            new = f"{_UNET_TOP[module]}.{param}"
        elif m := _BLOCK_KEY.match(key):
            side, i, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
            if side == "down_blocks":
                if kind == "resnets":
                    new = f"input_blocks.{input_index[i, j]}.0.{_rename_resnet(rest)}"
                elif kind == "attentions":
                    new = f"input_blocks.{input_index[i, j]}.1.{rest}"
                elif kind == "downsamplers" and rest.startswith("conv."):
                    new = f"input_blocks.{downsample_index[i]}.0.op.{rest[len('conv.'):]}"
            else:
                if kind == "resnets":
                    new = f"output_blocks.{output_index[i, j]}.0.{_rename_resnet(rest)}"
                elif kind == "attentions":
                    new = f"output_blocks.{output_index[i, j]}.1.{rest}"
                elif kind == "upsamplers":
                    last = output_index[i, up_layers[i] - 1]
                    new = f"output_blocks.{last}.{2 if i in up_has_attention else 1}.{rest}"
        elif m := _MID_KEY.match(key):
            kind, j, rest = m.group(1), int(m.group(2)), m.group(3)
            if kind == "attentions":
                new = f"middle_block.{1 + 2 * j}.{rest}"
            else:
                # ResBlock, SpatialTransformer, ResBlock
                new = f"middle_block.{2 * j if mid_has_attention else j}.{_rename_resnet(rest)}"
        if new is None:
            raise ValueError(f"don't know where UNet key {key!r} goes in the LDM layout")
        out[new] = tensor
    return out


# ---------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------

_VAE_ENCODER_BLOCK = re.compile(r"^encoder\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.+)$")
_VAE_DECODER_BLOCK = re.compile(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.+)$")
_VAE_MID = re.compile(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")
_VAE_TOP = re.compile(r"^((encoder|decoder)\.(conv_in|conv_out|conv_norm_out)|quant_conv|post_quant_conv)\.(weight|bias)$")

# The mid-block self-attention: diffusers uses Linear layers, LDM 1x1 convolutions.
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    # Names used by diffusers before 0.14 (old saved pipelines still have them).
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
}


def _vae_resnet(rest: str) -> str:
    # norm1/conv1/norm2/conv2 are the same in both; only the 1x1 shortcut is renamed.
    return rest.replace("conv_shortcut.", "nin_shortcut.", 1) if rest.startswith("conv_shortcut.") else rest


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> LDM ``AutoencoderKL`` keys (no prefix)."""
    n_up = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        new = None
        if _VAE_TOP.match(key):
            new = key.replace("conv_norm_out", "norm_out")
        elif m := _VAE_ENCODER_BLOCK.match(key):
            i, kind, j, rest = m.group(1), m.group(2), m.group(3), m.group(4)
            new = f"encoder.down.{i}.block.{j}.{_vae_resnet(rest)}" if kind == "resnets" else f"encoder.down.{i}.downsample.{rest}"
        elif m := _VAE_DECODER_BLOCK.match(key):
            # LDM numbers the decoder levels from the lowest resolution up, diffusers the reverse.
            i, kind, j, rest = n_up - 1 - int(m.group(1)), m.group(2), m.group(3), m.group(4)
            new = f"decoder.up.{i}.block.{j}.{_vae_resnet(rest)}" if kind == "resnets" else f"decoder.up.{i}.upsample.{rest}"
        elif m := _VAE_MID.match(key):
            side, kind, j, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4)
            if kind == "resnets":
                new = f"{side}.mid.block_{j + 1}.{_vae_resnet(rest)}"
            else:
                layer, _, param = rest.rpartition(".")
                if layer in _VAE_ATTENTION:
                    new = f"{side}.mid.attn_{j + 1}.{_VAE_ATTENTION[layer]}.{param}"
                    if param == "weight" and layer != "group_norm" and tensor.ndim == 2:
                        tensor = tensor.reshape(*tensor.shape, 1, 1)  # Linear [C, C] -> Conv2d 1x1
        if new is None:
            raise ValueError(f"don't know where VAE key {key!r} goes in the LDM layout")
        out[new] = tensor
    return out


# ---------------------------------------------------------------------------------------------
# Text encoder
# ---------------------------------------------------------------------------------------------


def text_encoder_to_ldm(state_dict: Mapping[str, torch.Tensor], max_positions: int = 77) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel keys -> keys under ``cond_stage_model.transformer.text_model.``.

    The LDM checkpoint simply embeds a transformers CLIPTextModel, so the names are the
    transformers ones. Recent transformers (>= 5.6) flattened CLIPTextModel (no ``text_model.``
    level), older ones did not: accept both, always write the classic ``text_model.`` form that
    every loader looks for.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        out[key.removeprefix("text_model.")] = tensor
    # position_ids became a non-persistent buffer in transformers, but the original checkpoints
    # carry it and some loaders (older A1111 versions) expect it; it is just 0..76.
    out.setdefault("embeddings.position_ids", torch.arange(max_positions, dtype=torch.int64).unsqueeze(0))
    return out


# ---------------------------------------------------------------------------------------------
# Whole pipeline
# ---------------------------------------------------------------------------------------------


def _check_sd1_text_encoder(text_encoder) -> None:
    config = text_encoder.config
    if any(k.endswith("text_projection.weight") for k in text_encoder.state_dict()):
        raise NotImplementedError("text encoder has a projection (SDXL-style); only SD 1.x pipelines can be exported")
    if getattr(config, "hidden_act", "quick_gelu") != "quick_gelu":
        raise NotImplementedError(
            f"text encoder uses {config.hidden_act!r} (an OpenCLIP / SD 2.x encoder, stored differently in "
            "LDM checkpoints); only SD 1.x pipelines can be exported"
        )


def ldm_state_dict(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """The full single-file state dict (prefixed keys) for an SD 1.x UNet + VAE + CLIP text encoder."""
    _check_sd1_text_encoder(text_encoder)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in unet_to_ldm(unet.state_dict(), unet.config).items():
        tensors[UNET_PREFIX + key] = value
    for key, value in vae_to_ldm(vae.state_dict(), vae.config).items():
        tensors[VAE_PREFIX + key] = value
    max_positions = int(getattr(text_encoder.config, "max_position_embeddings", 77))
    for key, value in text_encoder_to_ldm(text_encoder.state_dict(), max_positions).items():
        tensors[TEXT_PREFIX + key] = value
    return tensors


def _load_components(folder: Path):
    """UNet, VAE and text encoder of a saved diffusers pipeline folder (no tokenizer/scheduler needed)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    if index.get("text_encoder_2", [None])[0] is not None:
        raise NotImplementedError(f"{index.get('_class_name')} has two text encoders; only SD 1.x pipelines can be exported")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    return unet, vae, text_encoder


def export_single_file(pipe_or_folder, out_path: Path, *, half: bool = False) -> Path:
    """Write ``out_path`` (.safetensors, LDM key layout) from a pipeline object or a saved pipeline folder.

    ``half`` stores floating-point weights as float16 (the usual ~2 GB SD 1.5 file instead of ~4 GB).
    The file is written atomically (bot.models.atomic), so a crash never leaves a half-written
    checkpoint where a loader would pick it up.
    """
    from safetensors.torch import save_file

    out_path = Path(out_path)
    if isinstance(pipe_or_folder, (str, os.PathLike)):
        unet, vae, text_encoder = _load_components(Path(pipe_or_folder))
    else:
        pipe = pipe_or_folder
        if getattr(pipe, "text_encoder_2", None) is not None:
            raise NotImplementedError("pipeline has two text encoders; only SD 1.x pipelines can be exported")
        unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder

    tensors = {}
    for key, value in ldm_state_dict(unet, vae, text_encoder).items():
        value = value.detach().to("cpu")
        if half and value.is_floating_point():
            value = value.to(torch.float16)
        # safetensors refuses non-contiguous tensors (the reshaped VAE attention weights are views).
        tensors[key] = value.contiguous()

    out_path.parent.mkdir(parents=True, exist_ok=True)
    return write_file_atomic(out_path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.to_single_file",
        description="Export a diffusers SD 1.x pipeline folder as one LDM-layout .safetensors checkpoint "
        "(for AUTOMATIC1111, ComfyUI, ... and the bot's single-file loader).",
    )
    parser.add_argument("pipeline_dir", type=Path, help="folder written by pipeline.save_pretrained()")
    parser.add_argument("out", type=Path, help="output .safetensors file")
    parser.add_argument("--half", action="store_true", help="store weights as float16")
    args = parser.parse_args(argv)
    if args.out.suffix != ".safetensors":
        parser.error("the output file must end in .safetensors")
    path = export_single_file(args.pipeline_dir, args.out, half=args.half)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
