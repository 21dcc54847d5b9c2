"""DreamBooth and DreamBooth-LoRA fine-tuning of a model in the store, published back into it.

The reference project fine-tuned Stable Diffusion 2.1 with DreamBooth (diffusers'
train_dreambooth.py): a few instance images captioned with a rare token ("a photo of sks person"),
prior preservation with images the base model draws for the class prompt, lr 5e-6, constant
schedule, 400-800 steps, batch 1, gradient checkpointing. This script does the same over any
variant of the model store, in two flavours:

    --method dreambooth   the whole UNet (and optionally the text encoder) is trained; the result is
                          published as a full pipeline variant
    --method lora         peft LoRA adapters on the UNet's attention projections (to_q, to_k, to_v,
                          to_out.0, or those named by --lora-targets; optionally the text encoder's
                          q/k/v/out_proj) are trained; the
                          result is a small `kind = "lora"` variant over the base, which the bot
                          loads with `load_lora_weights` next to the base's weights

    python -m training.finetune --method lora --base sd21 --instance-data-dir data/me \\
        --instance-prompt "a photo of sks person" --class-prompt "a photo of a person" --name me-lora
    python -m training.finetune --method dreambooth --base sd21 --instance-data-dir data/me \\
        --instance-prompt "a photo of sks person" --class-prompt "a photo of a person" --name me
    python -m training.finetune --resume runs/finetune/checkpoint.pt --max-train-steps 800

The shipped demo model learns a new shape, "a red zwx heart on a white background" (instance
images rendered by training/concept.py; how long it takes is in docs/training.md, "The demo model"):

    python -m training.finetune --config training/configs/demo-finetuned.toml --models-dir models

Configuration: the `FinetuneConfig` defaults below (the reference's hyperparameters), then a TOML
file (`--config`), then `--key value` flags for any field (`--max-train-steps 800`, or the
reference's spelling `--max_train_steps=800`; a bare boolean flag such as
`--with-prior-preservation` means true). The final config is written to `<output_dir>/config.toml`,
next to `checkpoint.pt`.

Base model (`--base`): the name of a variant in `--models-dir` (a pipeline folder, a single-file
checkpoint or a hub model already in the local cache; nothing is ever downloaded), or the path of
a diffusers Stable Diffusion 1.x/2.x folder. A LoRA can only be published over a variant.

Instance data (`--instance-data-dir`): a folder of images (.jpg/.jpeg/.png/.webp), each
captioned by a `.txt` file of the same name if there is one, else by `instance_prompt`; or a
manifest file (.json/.jsonl/.csv/.txt with link + caption, as train_scratch reads). Images are
centre-cropped to a square and resized to `resolution` ("auto": the base variant's default size,
512 for SD 1.x/2.1-base, 768 for SD 2.1-v).

Prior preservation (on by default, as the reference): `num_class_images` images of `class_prompt`
(or of several `class_prompts`, or those of a `class_prompts_file`, in turn, so that a whole
vocabulary keeps its meaning, not one class) are drawn by the base model with its own defaults
(scheduler, steps, guidance) at the training resolution, and cached in
`<class_data_dir or output_dir>/class_images/` with an `index.json`; a rerun with the same base
(same files), prompt, size and drawing settings reuses them and only draws the missing ones. Each
step trains on instance and class images together: loss = instance MSE + prior_loss_weight * class
MSE.

Output folder (`output_dir`):

    config.toml       the final configuration of this run
    checkpoint.pt     trained weights (LoRA or full), optimizer, LR schedule, data order, step, RNG
                      (every `checkpointing_steps` and at the end; written atomically)
    log.jsonl         one JSON object per line: losses, learning rate, seconds per step, validation
    class_images/     prior-preservation images and their index.json (unless class_data_dir is set)
    samples/          validation grids (`validation_prompt`, fixed seeds) every `validation_steps`
    lora/             LoRA method: pytorch_lora_weights.safetensors (diffusers LoRA format)
    pipeline/         dreambooth method without --name: the fine-tuned pipeline

and, with `--name NAME`, the result published atomically as `<models_dir>/NAME` (bot.models.publish:
variant.toml written last, so a running bot never sees half a variant).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from bot.models.variant import MODEL_NAME
from training.common.run import Run, hide_progress_bars, load_checkpoint, log, run_script, torch_threads
from training.finetune_export import LORA_FILE, export
from training.finetune_inputs import (FinetuneError, class_prompt_list, drawing_defaults, load_base,
                                      read_instance_data, render_concept, resolve_base)
from training.finetune_prior import prior_images
from training.finetune_train import place_networks, prepare_inputs, setup_training, train_loop
from training.settings import Settings, SettingsError

# Also importable from here, where callers and tests have found them.
from training.finetune_inputs import read_class_prompts  # noqa: F401

METHODS = ("dreambooth", "lora")
MIXED_PRECISION = ("no", "fp16", "bf16")
ATTENTION = ("auto", "sdpa", "xformers")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
DEFAULT_LR = {"dreambooth": 5e-6, "lora": 1e-4}
UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # as diffusers' train_dreambooth_lora.py
LORA_TARGET = re.compile(r"(attn[12]\.)?(to_k|to_q|to_v|to_out\.0)")  # what lora_targets may name


@dataclass
class FinetuneConfig:
    # --- what to fine-tune, and how ---
    method: str = "dreambooth"  # dreambooth (full UNet) | lora (peft adapters on the attention projections)
    base: str = ""  # a variant of models_dir, or a diffusers pipeline folder
    models_dir: str = "models"
    train_text_encoder: bool = False  # also train the text encoder (full, or LoRA on q/k/v/out_proj)
    rank: int = 4  # lora: rank of the adapters
    lora_alpha: float = 0.0  # lora: alpha (the update is scaled by alpha / rank); 0 = rank
    # lora: the UNet modules that get adapters, by name suffix. ("attn2.to_k", "attn2.to_v") adapts only
    # how the cross-attention reads the prompt, as Custom Diffusion does: fewer side effects on prompts
    # without the new token, since self-attention and the queries stay as the base learned them.
    lora_targets: tuple[str, ...] = tuple(UNET_LORA_TARGETS)

    # --- instance data ---
    instance_data_dir: str = ""  # folder of images (+ optional .txt captions), or a manifest file
    instance_prompt: str = "a photo of sks person"  # caption of images without their own; a rare token names the subject
    # star | heart | plus: first render training.concept's images into instance_data_dir if that is missing
    concept: str = ""
    concept_images: int = 8
    concept_token: str = "zwx"

    # --- prior preservation ---
    with_prior_preservation: bool = True
    class_prompt: str = ""  # what the base draws for the class ("a photo of a person")
    class_prompts: tuple[str, ...] = ()  # several, drawn in turn (the j-th class image: prompt j mod n); overrides class_prompt
    class_prompts_file: str = ""  # the same from a text file, one prompt a line ('#' comments); overrides both
    class_data_dir: str = ""  # where class images are cached; empty: <output_dir>/class_images
    num_class_images: int = 100
    prior_loss_weight: float = 1.0
    sample_batch_size: int = 4  # images per pipeline call for class images and validation

    # --- optimisation (the reference's values) ---
    resolution: int = 0  # training size in pixels; 0 or "auto": the base variant's default size
    train_batch_size: int = 1  # instance images per step (plus as many class images)
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = True
    learning_rate: float = 0.0  # 0: 5e-6 for dreambooth, 1e-4 for lora
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_train_steps: int = 400  # the reference trained 400-800
    use_8bit_adam: bool = False  # bitsandbytes' AdamW8bit (CUDA; needs pip install bitsandbytes)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # no | fp16 (CUDA) | bf16, through accelerate
    attention: str = "auto"  # auto (xformers where installed on CUDA, else PyTorch SDPA) | sdpa | xformers
    seed: int = 0

    # --- validation, checkpoints, budget ---
    validation_prompt: str = ""  # empty: the instance prompt
    num_validation_images: int = 4
    validation_steps: int = 100  # steps between validation grids; 0 = only at the end
    checkpointing_steps: int = 500  # steps between checkpoints; 0 = only at the end
    time_budget: float = 0.0  # minutes of training (resumes included); 0 = none; the result is exported either way
    threads: int = 0  # CPU threads for torch; 0 = torch's default
    log_every: int = 10
    output_dir: str = "runs/finetune"

    # --- export ---
    name: str = ""  # publish as models_dir/<name>; empty: only the run folder
    description: str = ""  # empty: one naming the base and the instance prompt
    examples: tuple[str, ...] = ()  # prompts the result draws well; the web page offers them
    export_half: bool = True  # store the published weights as float16
    lora_scale: float = 1.0  # lora: the variant's scale (strength of the adapter)


# =============================================================================================
# Configuration: defaults < checkpoint's config (resume) < --config TOML < --key value flags
# =============================================================================================


SETTINGS = Settings(FinetuneConfig, what="fine-tuning run", special={"resolution": ("auto", 0)})


def load_config(path: Path, base: FinetuneConfig) -> FinetuneConfig:
    try:
        return SETTINGS.read(path, base)
    except SettingsError as error:
        raise FinetuneError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    return SETTINGS.parser(
        prog="python -m training.finetune",
        description="DreamBooth / DreamBooth-LoRA fine-tuning of a model in the store; publishes the result into it.",
        epilog="Every setting of FinetuneConfig is also a flag: --max-train-steps 800, --method lora, ... "
               "(see the module docstring of training/finetune.py and training/configs/demo-finetuned.toml).",
    )


def parse_args(argv: Sequence[str] | None = None) -> tuple[FinetuneConfig, Path | None]:
    """The run's configuration and the checkpoint to resume from (None: a fresh run).
    Raises FinetuneError for bad settings; argparse itself exits 2 on unknown flags."""
    try:
        return SETTINGS.parse(build_parser().parse_args(argv), check_config)
    except SettingsError as error:
        raise FinetuneError(str(error)) from None


def check_config(c: FinetuneConfig) -> str | None:
    """What is wrong with the settings themselves (no files are looked at), or None."""
    choices = {"method": METHODS, "mixed_precision": MIXED_PRECISION, "attention": ATTENTION,
               "lr_scheduler": LR_SCHEDULERS}
    for key, allowed in choices.items():
        if getattr(c, key) not in allowed:
            return f"{key} must be one of {', '.join(allowed)}, got {getattr(c, key)!r}"
    if not c.base:
        return "--base is required: the name of a variant in the model store (e.g. demo) or a diffusers model folder"
    if not c.instance_data_dir:
        return "--instance-data-dir is required: a folder of images of the subject, or a manifest file"
    if c.resolution and (c.resolution < 8 or c.resolution % 8):
        return f"resolution must be a positive multiple of 8 or \"auto\", got {c.resolution}"
    for key in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "rank", "sample_batch_size",
                "log_every"):
        if getattr(c, key) < 1:
            return f"{key} must be at least 1, got {getattr(c, key)}"
    for key in ("validation_steps", "checkpointing_steps", "lr_warmup_steps", "num_validation_images", "threads"):
        if getattr(c, key) < 0:
            return f"{key} must be 0 or more, got {getattr(c, key)}"
    if c.learning_rate < 0 or c.time_budget < 0 or c.lora_alpha < 0 or c.prior_loss_weight < 0:
        return "learning_rate, time_budget, lora_alpha and prior_loss_weight cannot be negative"
    if c.method == "lora" and (not c.lora_targets or not all(LORA_TARGET.fullmatch(t) for t in c.lora_targets)):
        return (f"lora_targets must name attention projections of the UNet ({', '.join(UNET_LORA_TARGETS)}, "
                f"optionally as attn1.<name> or attn2.<name>), got {list(c.lora_targets)}")
    if not -4 <= c.lora_scale <= 4:
        return f"lora_scale must be between -4 and 4 (what variant.toml allows), got {c.lora_scale}"
    if c.with_prior_preservation:
        if not c.class_prompts_file and not any(prompt.strip() for prompt in class_prompt_list(c)):
            return ("prior preservation needs --class-prompt, the subject's class without the rare token "
                    "(e.g. 'a photo of a person'); or turn it off with --with-prior-preservation false")
        if c.class_prompts and not all(prompt.strip() for prompt in c.class_prompts):
            return "class_prompts cannot hold an empty prompt"
        if c.num_class_images < 1:
            return f"num_class_images must be at least 1 with prior preservation, got {c.num_class_images}"
    if c.concept:
        from training.concept import CONCEPT_SHAPES

        if c.concept not in CONCEPT_SHAPES:
            return f"concept must be one of {', '.join(CONCEPT_SHAPES)} (or empty), got {c.concept!r}"
    if c.name and not MODEL_NAME.fullmatch(c.name):
        return (f"invalid model name {c.name!r}: letters, digits, '.', '_', '-', up to 64 characters, "
                "starting with a letter or digit")
    if c.use_8bit_adam and importlib.util.find_spec("bitsandbytes") is None:
        return ("use_8bit_adam needs the bitsandbytes package (pip install bitsandbytes; CUDA GPUs); "
                "install it or set --use-8bit-adam false")
    if c.attention == "xformers" and not (importlib.util.find_spec("xformers") and torch.cuda.is_available()):
        return ("attention 'xformers' needs the xformers package and a CUDA GPU; "
                "use --attention auto or sdpa (PyTorch's own fused attention)")
    if c.method == "lora" and c.train_text_encoder and c.name and (needed := text_encoder_lora_needs()):
        return (f"the bot loads text-encoder LoRA weights through transformers, which needs peft >= {needed} "
                f"(installed: {importlib.metadata.version('peft')}); upgrade peft (pip install -U peft) "
                "or set --train-text-encoder false")
    if c.mixed_precision == "fp16" and not torch.cuda.is_available():
        return "mixed_precision 'fp16' needs a CUDA GPU; use 'bf16' or 'no' on this machine"
    return None


def text_encoder_lora_needs() -> str | None:
    """The peft version transformers requires to load LoRA weights into a text encoder (what
    diffusers' load_lora_weights does for them), if the installed peft is older; else None."""
    from packaging.version import Version
    from transformers.integrations import peft as transformers_peft

    needed = getattr(transformers_peft, "MIN_PEFT_VERSION", "0")
    return needed if Version(importlib.metadata.version("peft")) < Version(needed) else None


# =============================================================================================
# Training: the stages in order (training.finetune_inputs, _prior, _train, _export)
# =============================================================================================


def train(c: FinetuneConfig, resume: Path | None = None) -> dict:
    """Fine-tune and export. Returns paths and the final step (for callers and tests)."""
    with torch_threads(c.threads):
        return _train(c, resume)


def _train(c: FinetuneConfig, resume: Path | None) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    hide_progress_bars()
    # 1. Inputs: everything that can be refused is refused before the first weight is read.
    base = resolve_base(c)
    render_concept(c)
    instance_pairs = read_instance_data(c)
    checkpoint = load_checkpoint(resume)
    if checkpoint and checkpoint.get("method") != c.method:
        raise FinetuneError(f"the checkpoint was trained with method {checkpoint.get('method')!r}, not {c.method!r}")

    # 2. The base, the settings that depend on it, the run folder (config.toml, log.jsonl, its clock).
    accelerator = Accelerator(mixed_precision=c.mixed_precision)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(c.mixed_precision, torch.float32)
    pipe = load_base(base)
    defaults = drawing_defaults(base, pipe)
    c = replace(c, learning_rate=c.learning_rate or DEFAULT_LR[c.method],
                resolution=c.resolution or min(defaults.width, defaults.height))
    run = Run(c, checkpoint, script="training.finetune")
    set_seed(c.seed)
    log(f"{c.method} over '{base.label}' at {c.resolution} px on {accelerator.device}, mixed precision "
        f"{c.mixed_precision}, lr {c.learning_rate:g}, {len(instance_pairs)} instance images, output {run.dir}")

    # 3. Class images from the untouched base, then every image encoded and every caption tokenized once.
    class_pairs = prior_images(c, pipe, base, defaults, run, accelerator.device, weight_dtype)
    place_networks(c, pipe, accelerator.device, weight_dtype)
    inputs = prepare_inputs(c, pipe, instance_pairs, class_pairs, accelerator.device)

    # 4. What is trained, the optimizer and the LR schedule; resumed where a checkpoint says.
    t = setup_training(c, pipe, inputs, accelerator, weight_dtype)
    if checkpoint:
        t.resume(checkpoint)

    # 5. The loop: instance and class images in one batch.
    train_loop(c, run, t, inputs, pipe, defaults, accelerator)

    # 6. Export.
    unet, text_encoder = accelerator.unwrap_model(t.unet), accelerator.unwrap_model(t.text_encoder)
    published = export(c, base, defaults, pipe, unet, text_encoder, run, t.progress.step)
    log(f"done in {run.elapsed() / 60:.1f} min (training time, resumes included)")
    return {"output_dir": run.dir, "step": t.progress.step, "published": published,
            "lora": run.dir / "lora" / LORA_FILE if c.method == "lora" else None}


def main(argv: Sequence[str] | None = None) -> int:
    return run_script("finetune", FinetuneError, lambda: train(*parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
