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
images rendered by training/concept.py; how long it takes is in the README, "The demo model"):

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
import hashlib
import importlib.metadata
import importlib.util
import json
import re
import shutil
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bot.files.atomic import write_atomic, write_text_atomic
from bot.models.publish import publish_variant
from bot.models.variant import DEFAULT_TYPES, MODEL_NAME, VariantDefaults
from training.common.data import Batches, Dataset, grid, load_image
from training.common.loop import Progress, StepTimer
from training.common.networks import adamw, encode_all, quietly_to, sample_latents, tokenize_once
from training.common.run import (Interrupted, Run, hide_progress_bars, load_checkpoint, log, run_script,
                                 stop_requested, torch_threads)
from training.manifest import IMAGE_SUFFIXES, training_pairs
from training.settings import Settings, SettingsError

METHODS = ("dreambooth", "lora")
MIXED_PRECISION = ("no", "fp16", "bf16")
ATTENTION = ("auto", "sdpa", "xformers")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
DEFAULT_LR = {"dreambooth": 5e-6, "lora": 1e-4}
LORA_FILE = "pytorch_lora_weights.safetensors"  # the name load_lora_weights looks for by default
UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # as diffusers' train_dreambooth_lora.py
LORA_TARGET = re.compile(r"(attn[12]\.)?(to_k|to_q|to_v|to_out\.0)")  # what lora_targets may name
TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
CLASS_INDEX = "index.json"


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


class FinetuneError(ValueError):
    """Bad input: the message says what was wrong and what is allowed (printed as one line, exit 2)."""


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
# The base model
# =============================================================================================


@dataclass(frozen=True)
class BaseModel:
    """Where the base comes from, without loading it."""

    label: str  # as given: a variant name or a folder
    variant: Any  # bot.models.spec.VariantSpec, or None for a plain folder
    folder: Path
    fingerprint: str  # changes whenever a file of the base changes (keys the class-image cache)
    defaults: VariantDefaults | None  # a variant's drawing defaults; None: read them from the pipeline


def resolve_base(c: FinetuneConfig) -> BaseModel:
    """Find `c.base` in the model store (or as a diffusers folder); FinetuneError if it is not usable."""
    from bot.models.registry import Registry

    registry = Registry(Path(c.models_dir))
    registry.scan()
    entry = registry.entry(c.base) if MODEL_NAME.fullmatch(c.base) else None
    if entry is not None:
        if entry.error or entry.spec is None:
            raise FinetuneError(f"base '{c.base}' in {c.models_dir} cannot be used: {entry.error}")
        spec = entry.spec
        if spec.kind == "lora":
            raise FinetuneError(f"base '{c.base}' is itself a LoRA; fine-tune a full model (its base is '{spec.base}')")
        return BaseModel(c.base, spec, spec.folder, spec.fingerprint, spec.defaults)
    folder = Path(c.base)
    if (folder / "model_index.json").is_file():
        if c.method == "lora" and c.name:
            raise FinetuneError("a LoRA is published over a variant of the model store: give --base the "
                                "variant's name, or use --method dreambooth, or leave --name out")
        return BaseModel(c.base, None, folder, _folder_fingerprint(folder), None)
    ready = ", ".join(e.name for e in registry.entries() if e.ready and e.spec and e.spec.kind != "lora")
    raise FinetuneError(f"unknown base '{c.base}': not a variant in {c.models_dir} (available: {ready or 'none'}) "
                        "nor a diffusers model folder (with model_index.json)")


def _folder_fingerprint(folder: Path) -> str:
    digest = hashlib.sha1(str(folder.resolve()).encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def load_base(base: BaseModel):
    """The base as a float32 StableDiffusionPipeline (from local files only)."""
    from diffusers import StableDiffusionPipeline

    try:
        if base.variant is not None:
            from bot.engine.loader import load_base_pipeline

            pipe = load_base_pipeline(base.variant, torch.float32, allow_download=False)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(str(base.folder), torch_dtype=torch.float32,
                                                           local_files_only=True)
    except Exception as error:  # diffusers, the loader and the hub raise many types; say which base and why
        raise FinetuneError(f"cannot load base '{base.label}': {error}") from error
    if not isinstance(pipe, StableDiffusionPipeline):
        raise FinetuneError(f"base '{base.label}' is a {type(pipe).__name__}; only Stable Diffusion 1.x/2.x "
                            "models (StableDiffusionPipeline) can be fine-tuned here")
    pipe.set_progress_bar_config(disable=True)
    # Fresh, writable, aligned tensors rather than views into memory-mapped checkpoint files: the
    # optimizer updates the trained ones in place (the engine does the same for its own reasons).
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder):
            for tensor in [*module.parameters(), *module.buffers()]:
                tensor.data = tensor.data.clone()
    return pipe


def drawing_defaults(base: BaseModel, pipe) -> VariantDefaults:
    """How the base draws (size, steps, guidance, scheduler): the variant's defaults, or for a plain
    folder its native size and the bot's general defaults."""
    if base.defaults is not None:
        return base.defaults
    native = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    return VariantDefaults(width=native, height=native)


# =============================================================================================
# Data: instance images, class images (prior preservation)
# =============================================================================================


def render_concept(c: FinetuneConfig) -> None:
    """With --concept, training.concept's images are rendered into instance_data_dir if it is missing."""
    if c.concept and not Path(c.instance_data_dir).exists():
        from training.concept import write_concept

        write_concept(c.instance_data_dir, c.concept, c.concept_token, c.concept_images, seed=c.seed,
                      size=c.resolution or 32)
        log(f"concept: rendered {c.concept_images} images of a '{c.concept_token} {c.concept}' into {c.instance_data_dir}")


def read_instance_data(c: FinetuneConfig) -> list[tuple[Path, str]]:
    """(image, caption) pairs of the instance data: a folder (captions from .txt files of the same
    name, else instance_prompt) or a manifest."""
    source = Path(c.instance_data_dir)
    suffixes = "/".join(IMAGE_SUFFIXES)
    if source.is_file():
        try:
            return training_pairs(source)
        except (OSError, ValueError, KeyError) as error:
            raise FinetuneError(f"instance data: {error}") from None
    if not source.is_dir():
        raise FinetuneError(f"instance data {source} does not exist: give a folder of images of the subject "
                            f"({suffixes}, optional .txt captions) or a manifest file")
    pairs = []
    for image in sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        sidecar = image.with_suffix(".txt")
        text = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
        pairs.append((image, text or c.instance_prompt))
    if not pairs:
        raise FinetuneError(f"instance data {source} holds no images ({suffixes})")
    return pairs


def load_images(pairs: Sequence[tuple[Path, str]], size: int) -> Dataset:
    try:
        pictures = [load_image(path, size) for path, _ in pairs]
    except OSError as error:
        raise FinetuneError(f"cannot read an instance image: {error}") from None
    return Dataset.from_pictures(pictures, [caption for _, caption in pairs])


def class_prompt_list(c: FinetuneConfig) -> list[str]:
    """The prompts class images are drawn for, in turn."""
    if c.class_prompts_file:
        return read_class_prompts(Path(c.class_prompts_file))
    return list(c.class_prompts) if c.class_prompts else [c.class_prompt]


def read_class_prompts(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise FinetuneError(f"cannot read class_prompts_file {path}: {error}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise FinetuneError(f"class_prompts_file {path} holds no prompts (one a line; '#' starts a comment)")
    return prompts


@torch.no_grad()
def class_images(pipe, c: FinetuneConfig, base: BaseModel, defaults: VariantDefaults, folder: Path,
                 device, dtype) -> tuple[list[tuple[Path, str]], int, int]:
    """The first `num_class_images` images of the class prompts (in turn) drawn by the base, from
    the cache in `folder` where present; the j-th image of a given key is drawn with seed j, so a
    top-up draws exactly the missing ones. Returns (image, caption) pairs, how many were drawn and
    reused."""
    from bot.engine.schedulers import make_scheduler

    prompts = class_prompt_list(c)
    # One prompt keeps the key of earlier runs (their cached images stay valid).
    key = {"base": base.label, "fingerprint": base.fingerprint, "prompt": prompts[0] if len(prompts) == 1 else prompts,
           "resolution": c.resolution, "steps": defaults.steps, "guidance": defaults.guidance,
           "scheduler": defaults.scheduler, "negative_prompt": defaults.negative_prompt}
    stem = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / CLASS_INDEX
    index: dict[str, dict] = json.loads(index_path.read_text(encoding="utf-8")) if index_path.is_file() else {}
    wanted = [f"{stem}-{j:05d}.png" for j in range(c.num_class_images)]
    missing = [j for j, file in enumerate(wanted)
               if index.get(file, {}).get("key") != key or not (folder / file).is_file()]
    if missing:
        log(f"class images: drawing {len(missing)} of {len(wanted)} for {len(prompts)} prompt(s), "
            f"'{prompts[0]}'{' ...' if len(prompts) > 1 else ''}, with '{base.label}' "
            f"({defaults.steps} steps, guidance {defaults.guidance}, {defaults.scheduler}, {c.resolution} px)")
        scheduler = pipe.scheduler
        pipe.scheduler = make_scheduler(defaults.scheduler, scheduler.config)
        quietly_to(pipe, dtype, device)
        try:
            for start in range(0, len(missing), c.sample_batch_size):
                chunk = missing[start: start + c.sample_batch_size]
                images = pipe([prompts[j % len(prompts)] for j in chunk],
                              negative_prompt=[defaults.negative_prompt] * len(chunk)
                              if defaults.negative_prompt else None,
                              num_inference_steps=defaults.steps, guidance_scale=defaults.guidance,
                              height=c.resolution, width=c.resolution,
                              generator=[torch.Generator().manual_seed(j) for j in chunk]).images
                for j, image in zip(chunk, images):
                    write_atomic(folder / wanted[j], lambda f: image.save(f, format="PNG"), binary=True)
                    index[wanted[j]] = {"key": key, "seed": j}
                # The index after every batch: an interrupted run keeps what it drew.
                write_text_atomic(index_path, json.dumps(index, indent=1, sort_keys=True) + "\n")
        finally:
            pipe.scheduler = scheduler
    return ([(folder / file, prompts[j % len(prompts)]) for j, file in enumerate(wanted)], len(missing),
            len(wanted) - len(missing))


# =============================================================================================
# Models: what is trained
# =============================================================================================


def setup_trainable(c: FinetuneConfig, unet, text_encoder) -> None:
    """Freeze the base, then open up what this method trains: LoRA adapters or whole networks."""
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    if c.method == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        alpha = c.lora_alpha or c.rank
        unet.add_adapter(LoraConfig(r=c.rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                    target_modules=list(c.lora_targets)))
        if c.train_text_encoder:
            # peft itself rather than transformers' add_adapter, which wants a newer peft than the
            # UNet side does; the adapter (and its saved state) is the same.
            inject_adapter_in_model(LoraConfig(r=c.rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                               target_modules=TEXT_LORA_TARGETS), text_encoder)
        # The frozen base may run in half precision (mixed precision); the adapters train in float32.
        for module in (unet, text_encoder):
            for parameter in module.parameters():
                if parameter.requires_grad:
                    parameter.data = parameter.data.float()
    else:
        unet.requires_grad_(True)
        if c.train_text_encoder:
            text_encoder.requires_grad_(True)
    if c.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if c.train_text_encoder:
            # Non-reentrant: with frozen embeddings the reentrant variant would drop the adapters' gradients.
            text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def set_attention(c: FinetuneConfig, unet, device: torch.device) -> str:
    from diffusers.models.attention_processor import AttnProcessor2_0

    use_xformers = c.attention == "xformers" or (
        c.attention == "auto" and device.type == "cuda" and importlib.util.find_spec("xformers") is not None)
    if use_xformers:
        unet.enable_xformers_memory_efficient_attention()
        return "xformers"
    unet.set_attn_processor(AttnProcessor2_0())
    return "sdpa"


def trainable_parameters(unet, text_encoder) -> dict[str, torch.nn.Parameter]:
    """Everything the optimizer updates, by a stable name (what a checkpoint stores)."""
    return {f"{prefix}.{name}": p for prefix, module in (("unet", unet), ("text_encoder", text_encoder))
            for name, p in module.named_parameters() if p.requires_grad}


def make_optimizer(c: FinetuneConfig, parameters: list[torch.nn.Parameter]):
    options = dict(lr=c.learning_rate, betas=(c.adam_beta1, c.adam_beta2), weight_decay=c.adam_weight_decay,
                   eps=c.adam_epsilon)
    if c.use_8bit_adam:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(parameters, **options)
    return adamw(parameters, **options)


# =============================================================================================
# Training
# =============================================================================================


@dataclass
class Inputs:
    """The training data, prepared once. Latent distributions stay on the CPU, where the loop's
    generator draws the noise that samples them; a caption is a row of token_ids."""

    instance_latents: tuple[torch.Tensor, torch.Tensor]  # mean, std of each instance image's latents
    instance_rows: torch.Tensor
    prior_latents: tuple[torch.Tensor, torch.Tensor] | None  # the class images (prior preservation)
    prior_rows: torch.Tensor | None
    token_ids: torch.Tensor
    scale: float  # the VAE's scaling_factor


@dataclass
class Training:
    """What the loop updates: the networks (prepared by accelerate), the trainable parameters by
    name, the loop's resumable state, and each caption's embedding where the text encoder is frozen."""

    unet: Any
    text_encoder: Any
    named: dict[str, torch.nn.Parameter]  # what a checkpoint stores
    parameters: list[torch.nn.Parameter]
    progress: Progress
    instance_batches: Batches
    prior_batches: Batches | None
    noise_scheduler: Any
    frozen_embeddings: torch.Tensor | None
    weight_dtype: torch.dtype  # of the frozen networks

    def state(self, method: str) -> dict:
        return {"stage": "train", "method": method,
                "trainable": {k: p.detach().cpu().clone() for k, p in self.named.items()},
                **self.progress.state_dict()}

    def resume(self, checkpoint: dict) -> None:
        with torch.no_grad():
            for key, parameter in self.named.items():
                parameter.copy_(checkpoint["trainable"][key])
        self.progress.load_state_dict(checkpoint)
        log(f"resumed at step {self.progress.step}")


def prior_images(c: FinetuneConfig, pipe, base: BaseModel, defaults: VariantDefaults, run: Run, device,
                 weight_dtype: torch.dtype) -> list[tuple[Path, str]]:
    """The class images of prior preservation (none without it), drawn by the untouched base or
    reused from the cache."""
    if not c.with_prior_preservation:
        return []
    folder = Path(c.class_data_dir) if c.class_data_dir else run.dir / "class_images"
    draw_dtype = torch.float32 if c.method == "dreambooth" else weight_dtype
    pairs, drawn, reused = class_images(pipe, c, base, defaults, folder, device, draw_dtype)
    run.write({"stage": "class_images", "step": 0, "drawn": drawn, "reused": reused, "folder": str(folder)})
    log(f"class images: {drawn} drawn, {reused} reused from {folder}")
    return pairs


def place_networks(c: FinetuneConfig, pipe, device, weight_dtype: torch.dtype) -> None:
    """Every network on the device. Frozen ones run in weight_dtype; those DreamBooth trains keep
    their float32 weights (autocast computes in half precision), never rounded through half
    precision on the way."""
    full = {"vae": False, "unet": c.method == "dreambooth",
            "text_encoder": c.method == "dreambooth" and c.train_text_encoder}
    for name, trained_in_full in full.items():
        module = getattr(pipe, name).to(device)
        if weight_dtype != torch.float32 and not trained_in_full:
            module.to(dtype=weight_dtype)


def prepare_inputs(c: FinetuneConfig, pipe, instance_pairs: list[tuple[Path, str]],
                   class_pairs: list[tuple[Path, str]], device) -> Inputs:
    """Every image encoded once by the frozen VAE (a latent is sampled from its distribution each
    time the image is drawn); every distinct caption tokenized once, as the pipeline does."""
    vae = pipe.vae
    vae.requires_grad_(False)
    instance = load_images(instance_pairs, c.resolution)
    prior = load_images(class_pairs, c.resolution) if class_pairs else None

    def latents(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        means, stds = encode_all(vae, data, device, batch_size=c.sample_batch_size)
        return means.cpu(), stds.cpu()

    captions = sorted(set(instance.captions) | set(prior.captions if prior else []))
    token_ids, row_of = tokenize_once(pipe.tokenizer, captions, device)
    return Inputs(latents(instance), torch.tensor([row_of[t] for t in instance.captions]),
                  latents(prior) if prior else None,
                  torch.tensor([row_of[t] for t in prior.captions]) if prior else None,
                  token_ids, float(vae.config.scaling_factor))


def setup_training(c: FinetuneConfig, pipe, inputs: Inputs, accelerator, weight_dtype: torch.dtype) -> Training:
    """What is trained (LoRA adapters or whole networks), the optimizer, the LR schedule (diffusers'
    names: constant, cosine, ...) and the data order."""
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    unet, text_encoder = pipe.unet, pipe.text_encoder
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    set_seed(c.seed)  # LoRA's initial weights do not depend on what ran before
    setup_trainable(c, unet, text_encoder)
    attention = set_attention(c, unet, accelerator.device)
    frozen_embeddings = None
    if not c.train_text_encoder:  # a frozen text encoder: each caption's embedding is computed once
        with torch.no_grad():
            frozen_embeddings = text_encoder(inputs.token_ids)[0].to(weight_dtype)
    named = trainable_parameters(unet, text_encoder)
    parameters = list(named.values())
    log(f"training {sum(p.numel() for p in parameters) / 1e6:.3f} M parameters ({c.method}"
        f"{', text encoder too' if c.train_text_encoder else ''}), attention {attention}")
    optimizer = make_optimizer(c, parameters)
    lr_schedule = get_scheduler(c.lr_scheduler, optimizer, num_warmup_steps=c.lr_warmup_steps,
                                num_training_steps=c.max_train_steps)
    unet, text_encoder, optimizer, lr_schedule = accelerator.prepare(unet, text_encoder, optimizer, lr_schedule)

    generator = torch.Generator().manual_seed(c.seed + 1)  # every random draw of training comes from here
    instance_batches = Batches(len(inputs.instance_rows), c.train_batch_size, generator)
    prior_batches = Batches(len(inputs.prior_rows), c.train_batch_size, generator) \
        if inputs.prior_rows is not None else None
    progress = Progress(optimizer, lr_schedule, generator,
                        {"instance_batches": instance_batches, "prior_batches": prior_batches})
    return Training(unet, text_encoder, named, parameters, progress, instance_batches, prior_batches,
                    noise_scheduler, frozen_embeddings, weight_dtype)


def dreambooth_loss(c: FinetuneConfig, t: Training, inputs: Inputs, accelerator) -> tuple[float, float]:
    """The MSE on a batch of instance images and, with prior preservation, as many class images in
    the same batch (loss = instance MSE + prior_loss_weight * class MSE); backpropagated. Returns
    (instance loss, prior loss). Every random number comes from the loop's generator, in a fixed order."""
    device, generator = accelerator.device, t.progress.generator
    index = t.instance_batches.next()
    latents = sample_latents(inputs.instance_latents, index, inputs.scale, generator, device)
    rows = inputs.instance_rows[index]
    if t.prior_batches is not None:
        prior_index = t.prior_batches.next()
        prior = sample_latents(inputs.prior_latents, prior_index, inputs.scale, generator, device)
        latents, rows = torch.cat([latents, prior]), torch.cat([rows, inputs.prior_rows[prior_index]])
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.randint(0, t.noise_scheduler.config.num_train_timesteps, (len(latents),),
                              generator=generator).to(device)
    noisy = t.noise_scheduler.add_noise(latents, noise, timesteps)
    if t.noise_scheduler.config.prediction_type == "v_prediction":  # SD 2.x 768-v
        target = t.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    rows = rows.to(device)
    with accelerator.autocast():
        hidden = t.frozen_embeddings[rows] if t.frozen_embeddings is not None \
            else t.text_encoder(inputs.token_ids[rows])[0]
        prediction = t.unet(noisy.to(t.weight_dtype), timesteps, hidden).sample
    if t.prior_batches is not None:
        prediction, prediction_prior = prediction.float().chunk(2)
        target, target_prior = target.chunk(2)
        loss_prior = F.mse_loss(prediction_prior, target_prior)
        loss_instance = F.mse_loss(prediction, target)
        loss = loss_instance + c.prior_loss_weight * loss_prior
    else:
        loss_instance = loss = F.mse_loss(prediction.float(), target)
        loss_prior = torch.zeros(())
    accelerator.backward(loss / c.gradient_accumulation_steps)
    return loss_instance.item(), loss_prior.item()


def stop_reason(c: FinetuneConfig, run: Run, t: Training) -> str | None:
    if stop_requested():
        return "interrupted (Ctrl+C)"
    if t.progress.step >= c.max_train_steps:
        return f"max_train_steps {c.max_train_steps} reached"
    if run.budget_left() <= 0:
        return f"time budget of {c.time_budget} min spent"
    return None


def log_step(c: FinetuneConfig, run: Run, t: Training, losses: list[tuple[float, float]], seconds: float) -> None:
    step = t.progress.step
    instance_loss, prior_loss = (float(v) for v in np.mean(losses, axis=0))
    row = {"stage": "train", "step": step, "loss": instance_loss + c.prior_loss_weight * prior_loss,
           "loss_instance": instance_loss, "loss_prior": prior_loss, "lr": t.progress.lr(),
           "s_per_step": round(seconds, 4)}
    run.write(row)
    log(f"step {step}/{c.max_train_steps}  loss {row['loss']:.4f} (instance {instance_loss:.4f}, "
        f"prior {prior_loss:.4f})  {seconds:.3f} s/step  {run.elapsed() / 60:.1f} min")


def validate(c: FinetuneConfig, run: Run, pipe, defaults: VariantDefaults, accelerator, step: int) -> None:
    path = run.dir / "samples" / f"validation_{step:06d}.png"
    images = validation_images(pipe, c, defaults, accelerator)
    grid(images, columns=min(8, len(images))).save(path)
    run.write({"stage": "validation", "step": step, "file": str(path)})
    log(f"validation grid at step {step}: {path}")


def train_loop(c: FinetuneConfig, run: Run, t: Training, inputs: Inputs, pipe, defaults: VariantDefaults,
               accelerator) -> None:
    """Optimizer steps until max_train_steps or the time budget; logs, checkpoints and validation
    grids on their schedules, and a checkpoint and a grid of the last step."""
    t.unet.train()
    t.text_encoder.train(c.train_text_encoder)
    losses: list[tuple[float, float]] = []
    timer, validated = StepTimer(t.progress.step), -1
    while (reason := stop_reason(c, run, t)) is None:
        for _ in range(c.gradient_accumulation_steps):
            losses.append(dreambooth_loss(c, t, inputs, accelerator))
        t.progress.optimizer_step(accelerator, t.parameters, c.max_grad_norm)
        step = t.progress.step
        if step % c.log_every == 0 or step == c.max_train_steps:
            log_step(c, run, t, losses, timer.lap(step))
            losses = []
        if c.checkpointing_steps and step % c.checkpointing_steps == 0:
            run.save_checkpoint(t.state(c.method))
        if c.validation_steps and c.num_validation_images and step % c.validation_steps == 0:
            validate(c, run, pipe, defaults, accelerator, step)
            validated = step
    log(f"stopping at step {t.progress.step}: {reason}")
    run.save_checkpoint(t.state(c.method))
    if stop_requested():  # not finished: no validation, no export; the checkpoint resumes it
        raise Interrupted(run.dir / "checkpoint.pt", t.progress.step)
    if validated != t.progress.step and c.num_validation_images:
        validate(c, run, pipe, defaults, accelerator, t.progress.step)


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


@torch.no_grad()
def validation_images(pipe, c: FinetuneConfig, defaults: VariantDefaults, accelerator) -> list:
    """The validation prompt with fixed seeds (0, 1, ...) as the bot would draw it with these weights."""
    from bot.engine.schedulers import make_scheduler

    prompt = c.validation_prompt or c.instance_prompt
    training_scheduler = pipe.scheduler
    pipe.scheduler = make_scheduler(defaults.scheduler, training_scheduler.config)
    modules = (pipe.unet, pipe.text_encoder)
    modes = [m.training for m in modules]
    for module in modules:
        module.eval()
    images = []
    try:
        with accelerator.autocast():
            for start in range(0, c.num_validation_images, c.sample_batch_size):
                seeds = range(start, min(start + c.sample_batch_size, c.num_validation_images))
                images += pipe([prompt] * len(seeds), negative_prompt=[defaults.negative_prompt] * len(seeds)
                               if defaults.negative_prompt else None,
                               num_inference_steps=defaults.steps, guidance_scale=defaults.guidance,
                               height=c.resolution, width=c.resolution,
                               generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    finally:
        pipe.scheduler = training_scheduler
        for module, mode in zip(modules, modes):
            module.train(mode)
    return images


# =============================================================================================
# Export
# =============================================================================================


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


# =============================================================================================
# main
# =============================================================================================


def main(argv: Sequence[str] | None = None) -> int:
    return run_script("finetune", FinetuneError, lambda: train(*parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
