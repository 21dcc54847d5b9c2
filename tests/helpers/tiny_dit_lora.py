"""LoRAs with random weights over the tiny diffusion-transformer pipelines of `tests/helpers/tiny_dit.py`.

`save_tiny_dit_lora` writes what diffusers and peft trainers write (the family pipeline's own
`save_lora_weights`, keys `transformer.<module>.lora_A/lora_B.weight`); `save_tiny_flux_kohya_lora`
writes a FLUX.1 LoRA in the Kohya layout (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`,
fused q/k/v, an `alpha` per module), the layout most FLUX.1 LoRAs on model sites come in.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import bot.engine.families as families
from tests.helpers.tiny_dit import BUILDERS

# The attention projections every one of these transformers names alike (FLUX.2's single-stream
# blocks fuse theirs into `to_qkv_mlp_proj`; the double-stream blocks still have these).
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
SCALE = 0.3  # random LoRA entries of this size change a tiny model's images clearly, not wildly


def save_tiny_dit_lora(base_folder: Path, out_folder: Path, family: str, seed: int = 1, rank: int = 4) -> Path:
    """A peft LoRA over the attention projections of a tiny pipeline folder's transformer.

    peft starts LoRA B matrices at zero (no effect until trained); these get random values so the
    adapter visibly changes the images, as a trained one would."""
    import diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    if family not in BUILDERS:
        raise ValueError(f"no tiny pipeline for {family!r}; there are: {', '.join(BUILDERS)}")
    config = json.loads((Path(base_folder) / "transformer" / "config.json").read_text(encoding="utf-8"))
    transformer = getattr(diffusers, config["_class_name"]).from_pretrained(
        str(Path(base_folder) / "transformer"), local_files_only=True)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                       target_modules=ATTENTION))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * SCALE)
    # The family's own pipeline class saves its LoRAs (the model store's catalogue names it).
    pipeline_class = getattr(diffusers, families.by_name(family).pipeline_class_name("text"))
    out_folder.mkdir(parents=True, exist_ok=True)
    pipeline_class.save_lora_weights(str(out_folder), transformer_lora_layers=get_peft_model_state_dict(transformer),
                                     safe_serialization=True)
    return out_folder


def save_tiny_flux_kohya_lora(base_folder: Path, path: Path, seed: int = 1, rank: int = 4,
                              alpha: float = 2.0) -> Path:
    """A FLUX.1 LoRA in the Kohya (sd-scripts, ComfyUI) layout over a tiny FLUX.1 folder's double-stream
    blocks: fused q/k/v of the image and text streams and their output projections, with `alpha`
    (the adapter scales by alpha / rank).

    Only double-stream blocks: diffusers splits a single-stream block's fused `linear1` at the
    full-size model's widths, which a tiny transformer does not have."""
    from safetensors.torch import save_file

    config = json.loads((Path(base_folder) / "transformer" / "config.json").read_text(encoding="utf-8"))
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    generator = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for block in range(config["num_layers"]):
        for stream in ("img", "txt"):
            for module, out in (("attn_qkv", 3 * inner), ("attn_proj", inner)):
                key = f"lora_unet_double_blocks_{block}_{stream}_{module}"
                weights[f"{key}.lora_down.weight"] = torch.randn(rank, inner, generator=generator) * SCALE
                weights[f"{key}.lora_up.weight"] = torch.randn(out, rank, generator=generator) * SCALE
                weights[f"{key}.alpha"] = torch.tensor(float(alpha))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path))
    return path
