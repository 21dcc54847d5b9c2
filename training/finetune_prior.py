"""Prior preservation: the class images the untouched base draws for the class prompts, cached
in `<class_data_dir or output_dir>/class_images/` with an index.json, so that a rerun with the same
base, prompts, size and drawing settings reuses them and draws only the missing ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bot.files.atomic import write_atomic, write_text_atomic
from bot.models.variant import VariantDefaults
from training.common.networks import quietly_to
from training.common.run import Run, log
from training.finetune_inputs import BaseModel, class_prompt_list

if TYPE_CHECKING:
    from training.finetune import FinetuneConfig

CLASS_INDEX = "index.json"


@torch.no_grad()
def class_images(pipe, c: FinetuneConfig, base: BaseModel, defaults: VariantDefaults, folder: Path,
                 device, dtype) -> tuple[list[tuple[Path, str]], int, int]:
    """The first `num_class_images` images of the class prompts (in turn) drawn by the base, from
    the cache in `folder` where present; the j-th image of a given key is drawn with seed j, so a
    top-up draws exactly the missing ones. Returns (image, caption) pairs, how many were drawn and
    reused."""
    from bot.engine.batch_invariance import batch_invariant
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
        # On the CPU a class image is the base's drawing of its prompt and seed whatever else is in
        # its batch (bot/engine/batch_invariance.py), so a top-up or another batch size draws the
        # same pictures; the modules run their own kernels again for training.
        invariant = batch_invariant(pipe) if torch.device(device).type == "cpu" else contextlib.nullcontext()
        try:
            with invariant:
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
