"""The AUTOMATIC1111 web UI's HTTP API, translated: its request bodies into our requests, our jobs
into its answers. The routes are in bot/frontends/web/routes/a1111.py.

The JSON shapes are A1111's own (modules/api/models.py of AUTOMATIC1111/stable-diffusion-webui:
StableDiffusionTxt2ImgProcessingAPI, TextToImageResponse {images, parameters, info},
ProgressResponse, SDModelItem, SamplerItem), so the clients written for it read ours unchanged.
What it has and we lack (hires fix, face restoration, tiling, styles, scripts) is refused by name
rather than silently left out; fields that only tune its own samplers (eta, s_churn, ...) are
accepted and have no effect.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from bot import __version__
from bot.config import Limits
from bot.core.errors import UserError
from bot.core.jobs import Job
from bot.core.option_values import parse_model_name, shorten
from bot.core.service import JobView
from bot.frontends.web.body_limit import MAX_BODY_BYTES
from bot.frontends.web.strings import render
from bot.models.variant import SCHEDULERS
from bot.outputs import A1111_CHUNK, A1111_SAMPLER_NAMES, ImageParameters, read_png_parameters, short_sampler

IMG2IMG_PATH = "/sdapi/v1/img2img"
PROMPT_CHARS = 20_000  # as POST /api/jobs takes; the configured limit applies after

# A1111's sampler aliases (its sd_samplers tables), and ours, for each scheduler we run.
ALIASES = {"dpm++": "k_dpmpp_2m", "dpm++_karras": "k_dpmpp_2m_ka", "euler_a": "k_euler_a", "euler": "k_euler",
           "heun": "k_heun", "ddim": "ddim", "pndm": "plms", "unipc": "unipc", "lcm": "k_lcm"}
# Its schedule types that are the sampler's own schedule, as ours run; "karras" makes DPM++ 2M Karras.
PLAIN_SCHEDULES = ("automatic", "uniform")
SCHEDULES = ({"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1, "need_inner_model": False},
             {"name": "uniform", "label": "Uniform", "aliases": None, "default_rho": -1, "need_inner_model": True},
             {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False})


def img2img_body_limit(max_upload_bytes: int) -> int:
    """The largest img2img body: an image and a mask of the largest upload, base64 (4 bytes for
    every 3), and the rest of the JSON."""
    return 2 * (max_upload_bytes * 4 // 3 + 4) + MAX_BODY_BYTES


# --- requests ----------------------------------------------------------------------------------------


class Txt2ImgIn(BaseModel):
    """A1111's txt2img body: the fields we use, checked; the rest kept (they come back in
    `parameters`) and otherwise ignored."""

    model_config = ConfigDict(extra="allow")

    prompt: str | None = Field(default="", max_length=PROMPT_CHARS)
    negative_prompt: str | None = Field(default="", max_length=PROMPT_CHARS)
    seed: int | None = -1  # -1: random
    subseed: int | None = -1  # variation seeds: not supported, ignored
    sampler_name: str | None = None
    sampler_index: str | None = None  # the older name of sampler_name
    scheduler: str | None = None  # its schedule type: automatic, uniform or karras
    batch_size: int | None = Field(default=1, ge=1)
    n_iter: int | None = Field(default=1, ge=1)
    steps: int | None = None
    cfg_scale: float | None = None
    distilled_cfg_scale: float | None = None  # Forge's: a guidance-distilled model's (FLUX.1 dev) guidance
    width: int | None = None
    height: int | None = None
    override_settings: dict[str, Any] | None = None
    send_images: bool | None = True
    enable_hr: bool | None = False
    restore_faces: bool | None = False
    tiling: bool | None = False
    styles: list[str] | None = None
    script_name: str | None = None

    def unsupported(self) -> list[str]:
        return [name for name in ("enable_hr", "restore_faces", "tiling", "styles", "script_name") if getattr(self, name)]


class Img2ImgIn(Txt2ImgIn):
    init_images: list[str] | None = None  # base64 pictures (a data: URL or plain); the first is used
    mask: str | None = None  # white is redrawn
    denoising_strength: float | None = 0.75
    inpainting_mask_invert: int | None = 0
    include_init_images: bool | None = False

    def unsupported(self) -> list[str]:
        return [*super().unsupported(), *(["inpainting_mask_invert"] if self.inpainting_mask_invert else [])]


def request_fields(body: Txt2ImgIn, limits: Limits) -> dict[str, Any]:
    """Keyword options for `Service.submit`: what the body says, in our terms. An empty negative
    prompt, a missing sampler, size, steps or CFG scale leave the model's own defaults."""
    unsupported = body.unsupported()
    if unsupported:
        raise UserError("a1111_unsupported", names=", ".join(unsupported))
    batch_size, n_iter = body.batch_size or 1, body.n_iter or 1
    if batch_size * n_iter > limits.max_images:
        raise UserError("a1111_too_many_images", batch_size=batch_size, n_iter=n_iter, count=batch_size * n_iter,
                        limit=limits.max_images)
    # Both guidance numbers go to the core, which takes the one the model's family guides with.
    fields = {"negative_prompt": body.negative_prompt or None, "seed": body.seed, "steps": body.steps,
              "cfg_scale": body.cfg_scale, "distilled_cfg_scale": body.distilled_cfg_scale,
              "width": body.width, "height": body.height, "count": batch_size * n_iter,
              "scheduler": scheduler_of(body.sampler_name or body.sampler_index, body.scheduler),
              "model": checkpoint_name((body.override_settings or {}).get("sd_model_checkpoint"))}
    return {name: value for name, value in fields.items() if value is not None}


def img2img_fields(body: Img2ImgIn) -> dict[str, Any]:
    """The picture (and mask) of an img2img body as bytes, and its denoising strength, for `Service.submit`."""
    if not body.init_images:
        raise UserError("a1111_no_init_image")
    fields: dict[str, Any] = {"image": image_bytes(body.init_images[0], "init_images[0]")}
    if body.mask:
        fields["mask"] = image_bytes(body.mask, "mask")
    fields["strength"] = 0.75 if body.denoising_strength is None else body.denoising_strength
    return fields


def image_bytes(text: str, what: str) -> bytes:
    """A picture sent as base64, plain or as a data: URL. URLs are not fetched (this server
    reaching out wherever a caller says would let them probe its network)."""
    text = text.strip()
    if text.startswith(("http://", "https://")):
        raise UserError("a1111_image_url", what=what)
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UserError("a1111_bad_image", what=what) from None


def scheduler_of(sampler: str | None, schedule: str | None) -> str | None:
    """Our scheduler for an A1111 sampler name (or alias, or our own name) and schedule type; None
    (the model's default) when no sampler is named."""
    if not sampler or not sampler.strip():
        return None
    named = _BY_NAME.get(sampler.strip().casefold())
    plain = not schedule or schedule.strip().casefold() in PLAIN_SCHEDULES
    if named is not None and plain:
        return named
    try:
        short = short_sampler(A1111_SAMPLER_NAMES[named][0] if named else sampler, None if plain else schedule)
    except ValueError:
        short = None
    if short not in SCHEDULERS:
        shown = sampler if plain else f"{sampler} + {schedule}"
        raise UserError("a1111_unknown_sampler", got=shorten(shown),
                        allowed=", ".join(item["name"] for item in samplers_json()))
    return short


def checkpoint_name(title: object) -> str | None:
    """A model as A1111's clients name it: its title ("demo"), or a file name with a hash
    ("demo.safetensors [6ce0161689]") as A1111 shows them."""
    if title is None or str(title).strip() == "":
        return None
    name = re.sub(r"\s*\[[0-9A-Fa-f]+\]$", "", str(title).strip())
    return parse_model_name(re.sub(r"\.(safetensors|ckpt)$", "", name))


def _display_name(short: str) -> str:
    name, schedule = A1111_SAMPLER_NAMES[short]
    return f"{name} {schedule}" if schedule else name


_BY_NAME = {alias.casefold(): short for short in SCHEDULERS
            for alias in (_display_name(short), ALIASES[short], short)}


# --- answers -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Picture:
    """One image of a finished job as its PNG file holds it."""

    data: bytes
    infotext: str  # the `parameters` chunk, as A1111 writes it
    parameters: ImageParameters


def read_pictures(outputs: Path, job: Job) -> list[Picture]:
    pictures = []
    for image in job.images:
        path = outputs / image.file
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as opened:
            infotext = dict(getattr(opened, "text", {})).get(A1111_CHUNK, "")
        pictures.append(Picture(data, infotext, read_png_parameters(path)))
    return pictures


def generation_json(job: Job, pictures: list[Picture], body: Txt2ImgIn) -> dict[str, Any]:
    """TextToImageResponse (and ImageToImageResponse): the images as base64 PNG (with their
    parameters inside, as A1111 sends them), the request as given, and `info`, the JSON text
    A1111's Processed.js() writes. A cancelled job (interrupted) has no images, as an A1111 job
    interrupted before its first image."""
    excluded = set() if getattr(body, "include_init_images", False) else {"init_images", "mask"}
    return {"images": [base64.b64encode(picture.data).decode("ascii") for picture in pictures]
            if body.send_images is not False else [],
            "parameters": body.model_dump(exclude=excluded),
            "info": json.dumps(info_json(job, pictures, body), ensure_ascii=False)}


def info_json(job: Job, pictures: list[Picture], body: Txt2ImgIn) -> dict[str, Any]:
    request = job.request
    made = [picture.parameters for picture in pictures]
    seeds = [parameters.seed for parameters in made]
    sampler, schedule = A1111_SAMPLER_NAMES[request.scheduler]
    # The numbers the images were drawn with, as their infotexts have them: for a FLUX.1 model,
    # CFG scale 1 and its guidance as the Distilled CFG Scale, as Forge writes them.
    cfg_scale = made[0].guidance if made else request.guidance
    distilled = made[0].distilled_guidance if made else None
    extra = {**({"Schedule type": schedule} if schedule else {}),
             **({"Distilled CFG Scale": distilled} if distilled is not None else {})}
    return {
        "prompt": made[0].prompt if made else request.prompt,
        "all_prompts": [parameters.prompt for parameters in made],
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [parameters.negative_prompt for parameters in made],
        "seed": seeds[0] if seeds else request.seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * len(seeds),
        "subseed_strength": 0,
        "width": request.width,
        "height": request.height,
        "sampler_name": sampler,
        "cfg_scale": cfg_scale,
        **({"distilled_cfg_scale": distilled} if distilled is not None else {}),
        "steps": request.steps,
        "batch_size": body.batch_size or 1,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": request.model,
        "sd_model_hash": made[0].model_hash if made else None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": request.strength,
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": [picture.infotext for picture in pictures],
        "styles": [],
        "job_timestamp": _timestamp(job.created_at),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": request.mask_image is not None,
        "version": f"imagebot {__version__}",
        "imagebot_job": job.public_id,  # the job on our own API: GET /api/jobs/{id}
    }


def current_job(views: list[JobView]) -> JobView | None:
    """The job A1111's /progress and /interrupt mean, of one caller's unfinished ones: the first
    running, else the next in line."""
    running = sorted((view for view in views if view.job.status == "running"), key=lambda view: view.job.id)
    if running:
        return running[0]
    waiting = sorted((view for view in views if view.position is not None), key=lambda view: view.position)
    return waiting[0] if waiting else None


def progress_json(current: JobView | None, job_count: int, preview: bytes | None,
                  locale: str | None) -> dict[str, Any]:
    """ProgressResponse for one caller: their current job's progress (0-1), the seconds it has
    left (for a waiting one, until it is done), A1111's state snapshot and the half-made image."""
    if current is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": _state(job_count=job_count), "current_image": None,
                "textinfo": None}
    job = current.job
    step, total = current.step or 0, current.total or job.request.steps
    if current.position is not None:
        text = render("ui_queued", locale, position=current.position)
    else:
        text = render("ui_progress", locale, step=step, total=total)
    return {"progress": min(1.0, step / total) if total else 0.0,
            "eta_relative": float(current.eta_seconds or 0.0),
            "state": _state(job=job.public_id, job_count=job_count, job_timestamp=_timestamp(job.created_at),
                            sampling_step=step, sampling_steps=total, interrupted=job.cancel_requested,
                            queue_position=current.position),
            "current_image": base64.b64encode(preview).decode("ascii") if preview else None,
            "textinfo": text}


def _state(**values: Any) -> dict[str, Any]:
    """A1111's shared.state.dict(), and `queue_position` (1 = next; None once running)."""
    return {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
            "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0, "queue_position": None,
            **values}


def _timestamp(when: float) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.localtime(when))


def sd_models_json(variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SDModelItem for each model ready to draw with; its title is the name requests use."""
    return [{"title": variant["name"], "model_name": variant["name"], "hash": None, "sha256": None,
             "filename": variant["name"], "config": None} for variant in variants if variant["status"] == "ready"]


def loras_json(variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """LoRA variants, as A1111's Lora extension lists them: a prompt uses one as <lora:NAME:WEIGHT>."""
    return [{"name": variant["name"], "alias": variant["name"], "path": variant["name"], "metadata": {}}
            for variant in variants if variant["kind"] == "lora" and variant["status"] == "ready"]


def options_json(default_model: str) -> dict[str, Any]:
    """The settings A1111's clients read: the model requests get when they name none, first."""
    return {"sd_model_checkpoint": default_model, "sd_checkpoint_hash": None, "samples_format": "png",
            "CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic"}


def samplers_json() -> list[dict[str, Any]]:
    """SamplerItem for each scheduler we run, by A1111's name ("DPM++ 2M Karras" as it was named
    before the schedule type became its own setting)."""
    return [{"name": _display_name(short), "aliases": list(dict.fromkeys((ALIASES[short], short))),
             "options": {"scheduler": "karras"} if A1111_SAMPLER_NAMES[short][1] else {}} for short in SCHEDULERS]
