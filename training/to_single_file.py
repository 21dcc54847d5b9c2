"""Export a diffusers Stable Diffusion pipeline as one original-layout ``.safetensors`` file.

AUTOMATIC1111, ComfyUI, Forge and friends load "single-file" checkpoints in the key layout of the
original CompVis/LDM (SD 1.x, 2.x) and Stability "generative-models" (SDXL) code, not diffusers
folders. This module renames the keys of a diffusers UNet, VAE and text encoder(s) into that
layout; diffusers' own ``from_single_file`` (and ``bot.engine.single_file.load_single_file``) reads
the result back.

It follows diffusers' ``scripts/convert_diffusers_to_original_stable_diffusion.py`` and
``convert_diffusers_to_original_sdxl.py``, with one difference: those scripts hard-code the
published models' shapes (SD 1.5: 4 levels x 2 layers, attention in the first 3 down levels).
Here the LDM block numbers are computed from the model's config and the attention layers from the
keys that are really there, so smaller models (the tiny test pipelines, 2 levels) come out right
too. Any key this does not know how to place is an error, not silently dropped.

Where each family keeps its text encoder(s):

* SD 1.x: CLIP (transformers names) under ``cond_stage_model.transformer.text_model.``;
* SD 2.x: OpenCLIP under ``cond_stage_model.model.`` (q/k/v fused into ``in_proj``; the
  diffusers encoder already stops at the penultimate layer, which is what is written);
* SDXL base: CLIP under ``conditioner.embedders.0.transformer.text_model.`` and OpenCLIP-bigG
  with its projection under ``conditioner.embedders.1.model.``;
* SDXL refiner: OpenCLIP-bigG alone under ``conditioner.embedders.0.model.``.

The file's metadata says the family and the prediction type in Stability's model-spec keys
(``modelspec.architecture``, ``modelspec.prediction_type``), which is how SD 2.x base and SD 2.x-v
(same tensors) are told apart when the file is loaded again.

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

from bot.files.atomic import write_file_atomic

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."
OPEN_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
REFINER_OPEN_CLIP_PREFIX = "conditioner.embedders.0.model."

# Family -> (Stability model-spec architecture, which text encoders go where).
FAMILY_ARCHITECTURE = {
    "sd15": "stable-diffusion-v1",
    "sd21": "stable-diffusion-v2-512",
    "sd21-v": "stable-diffusion-v2-768-v",
    "sdxl": "stable-diffusion-xl-v1-base",
    "sdxl-refiner": "stable-diffusion-xl-v1-refiner",
}

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


_OPEN_CLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_OPEN_CLIP_LAYER_PARTS = {
    "self_attn.out_proj.": "attn.out_proj.",
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}


def open_clip_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel(WithProjection) keys -> OpenCLIP keys (no prefix).

    OpenCLIP keeps one fused ``in_proj`` for query, key and value (in that order), and the text
    projection as a matrix applied on the right (the transpose of a Linear weight)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        key = key.removeprefix("text_model.")
        if key == "embeddings.position_ids":
            continue  # a constant buffer, not in OpenCLIP checkpoints
        if key in _OPEN_CLIP_TOP:
            out[_OPEN_CLIP_TOP[key]] = tensor
            continue
        if key == "text_projection.weight":
            out["text_projection"] = tensor.T
            continue
        m = _OPEN_CLIP_LAYER.match(key)
        if m is None:
            raise ValueError(f"don't know where text encoder key {key!r} goes in the OpenCLIP layout")
        layer, rest = int(m.group(1)), m.group(2)
        if q := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest):
            fused.setdefault((layer, q.group(2)), {})[q.group(1)] = tensor
            continue
        for old, new in _OPEN_CLIP_LAYER_PARTS.items():
            if rest.startswith(old):
                out[f"transformer.resblocks.{layer}.{new}{rest[len(old):]}"] = tensor
                break
        else:
            raise ValueError(f"don't know where text encoder key {key!r} goes in the OpenCLIP layout")
    for (layer, kind), parts in fused.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"text encoder layer {layer} lacks some of q/k/v {kind}")
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def pipeline_family(text_encoder, text_encoder_2, prediction_type: str = "epsilon") -> str:
    """sd15 | sd21 | sd21-v | sdxl | sdxl-refiner, from the text encoders a pipeline has."""
    if text_encoder_2 is not None:
        return "sdxl" if text_encoder is not None else "sdxl-refiner"
    if text_encoder is None:
        raise NotImplementedError("the pipeline has no text encoder; only Stable Diffusion pipelines can be exported")
    if getattr(text_encoder.config, "hidden_act", "quick_gelu") == "quick_gelu":
        if any(k.endswith("text_projection.weight") for k in text_encoder.state_dict()):
            raise NotImplementedError("a CLIP text encoder with a projection and no second encoder is no "
                                      "Stable Diffusion family this exporter knows")
        return "sd15"
    return "sd21-v" if prediction_type == "v_prediction" else "sd21"


def ldm_state_dict(unet, vae, text_encoder, text_encoder_2=None,
                   prediction_type: str = "epsilon") -> dict[str, torch.Tensor]:
    """The full single-file state dict (prefixed keys) of a UNet, VAE and the family's text encoder(s)."""
    family = pipeline_family(text_encoder, text_encoder_2, prediction_type)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in unet_to_ldm(unet.state_dict(), unet.config).items():
        tensors[UNET_PREFIX + key] = value
    for key, value in vae_to_ldm(vae.state_dict(), vae.config).items():
        tensors[VAE_PREFIX + key] = value
    encoders = {
        "sd15": [(text_encoder, TEXT_PREFIX, "clip")],
        "sd21": [(text_encoder, OPEN_CLIP_PREFIX, "open_clip")],
        "sd21-v": [(text_encoder, OPEN_CLIP_PREFIX, "open_clip")],
        "sdxl": [(text_encoder, SDXL_CLIP_PREFIX, "clip"), (text_encoder_2, SDXL_OPEN_CLIP_PREFIX, "open_clip")],
        "sdxl-refiner": [(text_encoder_2, REFINER_OPEN_CLIP_PREFIX, "open_clip")],
    }[family]
    for encoder, prefix, layout in encoders:
        if layout == "clip":
            max_positions = int(getattr(encoder.config, "max_position_embeddings", 77))
            converted = text_encoder_to_ldm(encoder.state_dict(), max_positions)
        else:
            converted = open_clip_to_ldm(encoder.state_dict())
        for key, value in converted.items():
            tensors[prefix + key] = value
    return tensors


def _load_components(folder: Path):
    """UNet, VAE, text encoders and prediction type of a saved diffusers pipeline folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    classes = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}

    def encoder(name: str):
        entry = index.get(name) or [None, None]
        if entry[0] is None:
            return None
        if entry[1] not in classes:
            raise NotImplementedError(f"{name} is a {entry[1]}; only CLIP text encoders can be exported")
        return classes[entry[1]].from_pretrained(folder, subfolder=name)

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    return unet, vae, encoder("text_encoder"), encoder("text_encoder_2"), scheduler.get("prediction_type", "epsilon")


def export_single_file(pipe_or_folder, out_path: Path, *, half: bool = False) -> Path:
    """Write ``out_path`` (.safetensors, original key layout) from a pipeline object or a saved pipeline folder.

    ``half`` stores floating-point weights as float16 (the usual ~2 GB SD 1.5 file instead of ~4 GB).
    The file is written atomically (bot.files.atomic), so a crash never leaves a half-written
    checkpoint where a loader would pick it up.
    """
    from safetensors.torch import save_file

    out_path = Path(out_path)
    if isinstance(pipe_or_folder, (str, os.PathLike)):
        unet, vae, text_encoder, text_encoder_2, prediction = _load_components(Path(pipe_or_folder))
    else:
        pipe = pipe_or_folder
        unet, vae = pipe.unet, pipe.vae
        text_encoder, text_encoder_2 = getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)
        prediction = pipe.scheduler.config.get("prediction_type", "epsilon")

    tensors = {}
    for key, value in ldm_state_dict(unet, vae, text_encoder, text_encoder_2, prediction).items():
        value = value.detach().to("cpu")
        if half and value.is_floating_point():
            value = value.to(torch.float16)
        # safetensors refuses non-contiguous tensors (the reshaped VAE attention weights are views).
        tensors[key] = value.contiguous()
    family = pipeline_family(text_encoder, text_encoder_2, prediction)
    architecture = FAMILY_ARCHITECTURE[family] + ("-inpainting" if unet.config.in_channels == 9 else "")
    metadata = {"format": "pt", "modelspec.architecture": architecture,
                "modelspec.prediction_type": "v" if prediction == "v_prediction" else "epsilon"}

    out_path.parent.mkdir(parents=True, exist_ok=True)
    return write_file_atomic(out_path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.to_single_file",
        description="Export a diffusers SD 1.x, SD 2.x or SDXL pipeline folder as one original-layout .safetensors checkpoint "
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
