"""The end of a train_scratch run: the float16 pipeline saved and published into the model store
(bot.models.publish), and held-out shape prompts scored by training.shapes.judge.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bot.files.atomic import write_text_atomic
from bot.models.publish import publish_variant
from training import shapes
from training.common.data import grid
from training.common.networks import quietly_to
from training.common.run import Run, log
from training.scratch_unet import generate

if TYPE_CHECKING:
    from training.train_scratch import TrainingConfig


def evaluate(pipe, c: TrainingConfig, run: Run) -> dict:
    """Score held-out prompts with training.shapes.judge at each of eval_guidances."""
    prompts = shapes.held_out_prompts(c.eval_prompts, seed=c.seed)
    report: dict = {"prompts": len(prompts), "steps": c.sample_steps, "by_guidance": {}}
    for guidance in c.eval_guidances:
        started = time.perf_counter()
        images = generate(pipe, c, [p.prompt for p in prompts], [p.seed for p in prompts], guidance)
        verdicts = [shapes.judge(image, p.spec) for image, p in zip(images, prompts)]
        scores = shapes.score(verdicts)
        scores["seconds"] = round(time.perf_counter() - started, 1)
        report["by_guidance"][str(guidance)] = scores
        grid(images).save(run.dir / "samples" / f"eval_guidance_{guidance}.png")
        log(f"eval guidance {guidance}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    write_text_atomic(run.dir / "eval.json", json.dumps(report, indent=2) + "\n")
    run.write({"stage": "eval", "step": 0, **{f"g{g}_{k}": v for g, s in report["by_guidance"].items()
                                              for k, v in s.items()}})
    return report


def variant_defaults(c: TrainingConfig) -> dict:
    # Far above the size it learned a model draws garbage, slowly: four times its size is the limit.
    return {"steps": c.sample_steps, "guidance": c.sample_guidance, "width": c.image_size,
            "height": c.image_size, "scheduler": "dpm++", "negative_prompt": c.negative_prompt or None,
            "max_side": 4 * c.image_size}


def describe(c: TrainingConfig, steps: int) -> str:
    if c.description:
        return c.description
    if c.data == "shapes":
        return (f"Tiny demo model trained from scratch on coloured shapes ({c.image_size} px, {steps} steps): "
                "try 'a red circle on a blue background'")
    return f"Trained from scratch on {Path(c.manifest).name} ({c.image_size} px, {steps} steps)"


def export(pipe, c: TrainingConfig, run: Run, steps: int) -> Path | None:
    """The pipeline in float16 (converted in place) into output_dir/pipeline and, with a name,
    published into the model store."""
    quietly_to(pipe, torch.float16)
    folder = run.dir / "pipeline"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    size = sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / 2**20
    log(f"saved {folder} ({size:.1f} MiB of float16 weights)")
    if not c.name:
        return None
    published = publish_variant(c.models_dir, c.name,
                                lambda staging: pipe.save_pretrained(staging, safe_serialization=True),
                                variant_defaults(c), describe(c, steps),
                                fields={"examples": list(c.examples)} if c.examples else None)
    log(f"published model '{c.name}' at {published}")
    return published
