"""Training benchmark on CPU or GPU, all numbers from one run.

    python bench/training.py [--steps 30]

Runs the real scripts (training.train_scratch, training.finetune) on small configs in a temporary
folder and reads their own step timings from log.jsonl (the first logging window is warm-up and
is dropped). Prints:

  scratch tiny   samples/s of a from-scratch UNet + text encoder step, the tests' tiny config
  scratch demo   the same with the shipped demo model's architecture (training/configs/demo.toml)
  lora tiny      samples/s of a DreamBooth-LoRA step (instance + class image per sample) over a tiny base
  dreambooth     the same for a full-UNet DreamBooth step
  publish        seconds to publish a variant into a model store, and until a registry scan sees it
                 (a running bot polls every [models] rescan_seconds, 2 s by default, on top)
  ratio          LoRA samples/s over full DreamBooth samples/s on the same base
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers.tiny import save_tiny_pipeline, tiny_pipeline  # noqa: E402
from training import finetune, train_scratch  # noqa: E402

TINY_SCRATCH = [
    "--num-images", "64", "--vae-steps", "2", "--vae-batch-size", "8", "--vae-channels", "8,8,8",
    "--vae-norm-groups", "4", "--train-batch-size", "8", "--unet-channels", "16,16", "--unet-layers-per-block", "1",
    "--unet-attention-heads", "2", "--unet-norm-groups", "4", "--text-width", "16", "--text-heads", "2",
    "--lr-warmup-steps", "1", "--sample-steps", "2", "--sample-every", "0", "--save-every", "0",
    "--eval-prompts", "0",
]
DEMO_SCRATCH = [
    "--config", "training/configs/demo.toml", "--num-images", "256", "--vae-steps", "2", "--sample-every", "0",
    "--save-every", "0", "--eval-prompts", "0", "--sample-steps", "2", "--time-budget", "0",
]


def steady_seconds_per_step(log_file: Path, stage: str) -> float:
    rows = [json.loads(line) for line in log_file.read_text().splitlines()]
    times = [row["s_per_step"] for row in rows if row.get("stage") == stage and "s_per_step" in row]
    if len(times) < 2:
        raise SystemExit(f"{log_file}: too few '{stage}' timings ({len(times)}); raise --steps")
    return statistics.median(times[1:])  # the first window includes warm-up


def quietly(function, *args):
    """Run a training script without its progress lines (the bench prints its own summary)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args)


def scratch(work: Path, name: str, flags: list[str], steps: int) -> tuple[float, int]:
    out = work / name
    quietly(train_scratch.main, [*flags, "--output-dir", str(out), "--max-steps", str(steps),
                                 "--log-every", str(max(1, steps // 5)), "--num-epochs", "0"])
    config = train_scratch.load_toml_config(out / "config.toml", train_scratch.TrainingConfig())
    return steady_seconds_per_step(out / "log.jsonl", "unet"), config.train_batch_size


def finetune_run(work: Path, method: str, base: Path, instances: Path, steps: int) -> tuple[float, int]:
    out = work / method
    quietly(finetune.main, [
        "--method", method, "--base", str(base), "--instance-data-dir", str(instances),
        "--instance-prompt", "a zwx star", "--class-prompt", "a star", "--num-class-images", "4",
        "--resolution", "64", "--train-batch-size", "2", "--max-train-steps", str(steps),
        "--log-every", str(max(1, steps // 5)), "--validation-steps", "0", "--num-validation-images", "1",
        "--checkpointing-steps", "0", "--output-dir", str(out), "--gradient-checkpointing", "false",
    ])
    return steady_seconds_per_step(out / "log.jsonl", "train"), 2


def publish_latency(work: Path) -> tuple[float, float]:
    from bot.models.registry import Registry
    from bot.models.publish import publish_variant

    models = work / "models"
    models.mkdir()
    registry = Registry(models)
    registry.scan()
    pipe = tiny_pipeline()
    started = time.perf_counter()
    publish_variant(models, "fresh", pipe.save_pretrained, {"steps": 2})
    published = time.perf_counter() - started
    while True:
        registry.scan()
        entry = registry.entry("fresh")
        if entry is not None and entry.ready:
            return published, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per measured run")
    args = parser.parse_args()
    os.chdir(Path(__file__).resolve().parent.parent)  # the demo config's paths are relative to the repo
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        base = save_tiny_pipeline(work / "tiny-base")
        from training.concept import write_concept

        instances = work / "instances"
        write_concept(instances, shape="star", token="zwx", count=4, size=64)

        results = {}
        for label, flags in (("scratch tiny", TINY_SCRATCH), ("scratch demo", DEMO_SCRATCH)):
            seconds, batch = scratch(work, label.replace(" ", "-"), flags, args.steps)
            results[label] = (seconds, batch)
        for method in ("lora", "dreambooth"):
            results[f"{method} tiny"] = finetune_run(work, method, base, instances, args.steps)
        published, seen = publish_latency(work)

    print(f"{'run':<16}{'s/step':>9}{'batch':>7}{'samples/s':>11}")
    for label, (seconds, batch) in results.items():
        print(f"{label:<16}{seconds:>9.3f}{batch:>7}{batch / seconds:>11.1f}")
    print(f"publish: {published:.2f} s to publish a tiny variant, visible to a registry scan after {seen:.2f} s")
    ratio = (results["lora tiny"][1] / results["lora tiny"][0]) / (results["dreambooth tiny"][1] /
                                                                    results["dreambooth tiny"][0])
    print(f"ratio: LoRA step throughput / full DreamBooth step throughput = {ratio:.2f}x")


if __name__ == "__main__":
    main()
