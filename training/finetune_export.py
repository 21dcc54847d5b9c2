"""The result of a fine-tuning run, saved and published: LoRA adapters in diffusers' format
(a `kind = "lora"` variant over the base) or the whole fine-tuned pipeline (bot.models.publish:
variant.toml written last, so a running bot never sees half a variant).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bot.models.publish import publish_variant
from bot.models.variant import DEFAULT_TYPES, VariantDefaults
from training.common.networks import quietly_to
from training.common.run import Run, log
from training.finetune_inputs import BaseModel

if TYPE_CHECKING:
    from training.finetune import FinetuneConfig

LORA_FILE = "pytorch_lora_weights.safetensors"  # the name load_lora_weights looks for by default


def save_lora(c: FinetuneConfig, unet, text_encoder, folder: Path) -> Path:
    """The adapters in diffusers' LoRA format (what `pipe.load_lora_weights` reads), with the peft
    config as metadata so alpha / rank is restored on loading."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    dtype = torch.float16 if c.export_half else torch.float32

    def layers(module) -> dict[str, torch.Tensor]:
        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
        return {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}

    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        str(folder), unet_lora_layers=layers(unet),
        text_encoder_lora_layers=layers(text_encoder) if c.train_text_encoder else None,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=text_encoder.peft_config["default"].to_dict()
        if c.train_text_encoder else None,
        safe_serialization=True)
    return folder / LORA_FILE


def describe(c: FinetuneConfig, base: BaseModel, steps: int) -> str:
    if c.description:
        return c.description
    what = "DreamBooth LoRA" if c.method == "lora" else "DreamBooth"
    return f"{what} of '{base.label}' ({steps} steps, {c.resolution} px): try '{c.validation_prompt or c.instance_prompt}'"


def export(c: FinetuneConfig, base: BaseModel, defaults: VariantDefaults, pipe, unet, text_encoder,
           run: Run, steps: int) -> Path | None:
    """LoRA: run/lora/ and, with a name, a `kind = "lora"` variant over the base. DreamBooth: the
    pipeline into the model store (with a name) or run/pipeline."""
    description = describe(c, base, steps)
    if c.method == "lora":
        file = save_lora(c, unet, text_encoder, run.dir / "lora")
        log(f"saved {file} ({file.stat().st_size / 2**20:.2f} MiB)")
        if not c.name:
            return None
        # Size as trained; steps, guidance and scheduler are the base's (the registry inherits them).
        published = publish_variant(c.models_dir, c.name,
                                     lambda staging: shutil.copytree(file.parent, staging, dirs_exist_ok=True),
                                     {"width": c.resolution, "height": c.resolution}, description,
                                     fields={"kind": "lora", "base": base.label, "file": LORA_FILE,
                                             "scale": c.lora_scale, **_examples(c)})
    else:
        pipe.unet, pipe.text_encoder = unet, text_encoder
        if c.export_half:
            quietly_to(pipe, torch.float16)
        # Only drawing defaults: what the weights are (role, refiner) is not the fine-tune's to copy.
        drawing = {k: v for k, v in asdict(defaults).items() if k in DEFAULT_TYPES}
        variant_defaults = {**drawing, "width": c.resolution, "height": c.resolution}
        variant_defaults["negative_prompt"] = variant_defaults["negative_prompt"] or None
        if not c.name:
            folder = run.dir / "pipeline"
            pipe.save_pretrained(str(folder), safe_serialization=True)
            log(f"saved {folder}")
            return None
        published = publish_variant(c.models_dir, c.name,
                                     lambda staging: pipe.save_pretrained(staging, safe_serialization=True),
                                     variant_defaults, description, fields=_examples(c))
    log(f"published model '{c.name}' at {published}")
    return published


def _examples(c: FinetuneConfig) -> dict:
    return {"examples": list(c.examples)} if c.examples else {}
