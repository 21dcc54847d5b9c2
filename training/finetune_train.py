"""The fine-tuning itself: what is trained (LoRA adapters or whole networks), the inputs prepared
once, the DreamBooth loss (instance and class images in one batch), validation grids, and the loop
with its checkpoints.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from bot.models.variant import VariantDefaults
from training.common.data import Batches, Dataset, grid
from training.common.loop import Progress, StepTimer
from training.common.networks import adamw, encode_all, sample_latents, tokenize_once
from training.common.run import Interrupted, Run, log, stop_requested
from training.finetune_inputs import load_images

if TYPE_CHECKING:
    from training.finetune import FinetuneConfig

TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


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
