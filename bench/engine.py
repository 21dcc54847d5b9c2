"""Engine benchmark on tiny random-weight models (CPU or GPU), all numbers from one run.

    python bench/engine.py [--steps 20] [--repeat 5] [--models sd,flux1-dev,sd3,zimage]

One row per model: the tiny SD 1.x pipeline (`sd`) and the tiny diffusion transformers of
tests/helpers/tiny_dit.py (flux1-dev, flux1-schnell, sd3, flux2-klein, zimage, qwenimage), each
64x64 with random weights, through the real model store and engine. Each time is the fastest of
--repeat runs after a warm-up (the machine may be shared). Prints a markdown table:
  load       loading the model from its folder into a fresh engine
  alone      one generate() call for one image
  overhead   that call over calling the same diffusers pipeline directly (the same image)
  batched    seconds per image of one generate() call with 8 images; speed-up = alone / batched
  invariance batched throughput with batch-invariant kernels over without (CPU default is on)
and, for `sd`, LoRAs: switching between two LoRAs that stay loaded (set_adapters) against loading
one from disk.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bot.config import EngineConfig, Limits  # noqa: E402
from bot.core.request import parse_prompt  # noqa: E402
from bot.core.resolve import resolve  # noqa: E402
from bot.engine.engine import Engine  # noqa: E402
from bot.models.registry import Registry  # noqa: E402
from tests.helpers.tiny import save_tiny_lora, save_tiny_pipeline  # noqa: E402
from tests.helpers.tiny_dit import BUILDERS, save_tiny_dit  # noqa: E402

PROMPTS = ["a red circle", "a blue square", "a green tree", "a yellow sun",
           "a black cat", "a white boat", "an orange fox", "a purple house"]
LABELS = {"sd": "SD 1.x (UNet)", "sd3": "SD 3.5", "flux1-dev": "FLUX.1 [dev]", "flux1-schnell": "FLUX.1 [schnell]",
          "flux2-klein": "FLUX.2 [klein]", "zimage": "Z-Image", "qwenimage": "Qwen-Image"}
LIMITS = Limits(min_side=32)


def best_seconds(run, repeat: int) -> float:
    """The fastest of `repeat` runs after a warm-up: on a shared machine the run least slowed by
    other work is the closest to what the code costs (medians here moved by 2-4x between runs)."""
    run()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def make_store(names: list[str]) -> Path:
    models = Path(tempfile.mkdtemp()) / "models"
    for name in names:
        if name == "sd":
            save_tiny_pipeline(models / "sd")
            (models / "sd" / "variant.toml").write_text('kind = "pipeline"\n')
            for seed, lora in ((1, "style-a"), (2, "style-b")):
                save_tiny_lora(models / "sd", models / lora, seed=seed)
                (models / lora / "variant.toml").write_text('kind = "lora"\nbase = "sd"\n')
        else:
            save_tiny_dit(name, models / name)
            (models / name / "variant.toml").write_text("[defaults]\nwidth = 64\nheight = 64\n")
    return models


def make_engine(models: Path, invariant: str = "auto") -> Engine:
    registry = Registry(models)
    registry.scan()
    return Engine(registry, EngineConfig(max_batch=8, batch_invariant=invariant), allow_download=False)


def requests(engine: Engine, model: str, count: int, steps: int):
    defaults = engine.registry.ready_defaults()
    return [resolve(parse_prompt(f"{PROMPTS[i]} --seed {i} --steps {steps}"), defaults, model, LIMITS)
            for i in range(count)]


def load_seconds(models: Path, name: str, repeat: int) -> float:
    """A fresh engine's first load of the model (its files are in the page cache after the warm-up)."""
    def load() -> None:
        engine = make_engine(models)
        engine.residency.resident_for(engine.registry.get(name))
        del engine
        gc.collect()
    return best_seconds(load, repeat)


def direct_call(engine: Engine, name: str, one):
    """The pipeline the engine uses, called directly as diffusers documents it (plain text)."""
    resident = engine.residency.models[name]
    pipe = resident.pipe
    text = resident.family.call_arguments(pipe, [one.prompt], [one.negative_prompt], one)
    if "prompt" not in text:  # prompt embeddings (weights, long prompts): diffusers takes plain text too
        text = dict(prompt=one.prompt, negative_prompt=one.negative_prompt, guidance_scale=one.guidance)

    def run() -> None:
        with torch.inference_mode():
            pipe(**text, num_inference_steps=one.steps, width=one.width, height=one.height,
                 generator=torch.Generator().manual_seed(one.seed))
    return run


def model_row(models: Path, name: str, engine: Engine, plain: Engine, args) -> dict:
    row = {"load": load_seconds(models, name, args.repeat)}
    batch = requests(engine, name, 8, args.steps)
    row["alone"] = best_seconds(lambda: engine.generate(batch[:1]), args.repeat * 3)
    row["direct"] = best_seconds(direct_call(engine, name, batch[0]), args.repeat * 3)
    row["batched"] = best_seconds(lambda: engine.generate(batch), args.repeat) / 8
    plain_batch = requests(plain, name, 8, args.steps)
    row["plain"] = best_seconds(lambda: plain.generate(plain_batch), args.repeat) / 8
    engine.unload(name)
    plain.unload(name)
    return row


def print_table(rows: dict[str, dict]) -> None:
    print("| model | load | one image alone (engine.generate) | direct pipeline call | engine overhead "
          "| per image, batch of 8 | batching speed-up | per image, batch of 8 without invariance "
          "| invariance costs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {LABELS[name]} | {r['load']:.2f} s | {r['alone'] * 1000:.0f} ms | {r['direct'] * 1000:.0f} ms "
              f"| {(r['alone'] / r['direct'] - 1) * 100:+.1f}% | {r['batched'] * 1000:.0f} ms "
              f"| {r['alone'] / r['batched']:.2f}x | {r['plain'] * 1000:.0f} ms | {r['batched'] / r['plain']:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--models", default="sd,flux1-dev,sd3,zimage",
                        help=f"comma-separated, of: sd, {', '.join(BUILDERS)}")
    args = parser.parse_args()
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in names if name not in LABELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(LABELS)}")

    models = make_store(names)
    engine, plain = make_engine(models), make_engine(models, "off")
    rows = {name: model_row(models, name, engine, plain, args) for name in names}
    load = os.getloadavg()[0]
    print(f"device {engine.device}, dtype {engine.dtype}, tiny models 64x64, {args.steps} steps, "
          f"batch_invariant={'on' if engine.device.type == 'cpu' else 'off'} (engine default), "
          f"torch threads {torch.get_num_threads()}, load average {load:.2f} on {os.cpu_count()} CPUs")
    print()
    print_table(rows)
    if "sd" in names:
        print()
        lora_table(engine, args.repeat)


def lora_table(engine: Engine, repeat: int) -> None:
    """LoRAs per request: what switching costs once both adapters are loaded, next to loading one."""
    base = engine.registry.get("sd")
    engine.residency.activate(base, [])
    loads = []
    for _ in range(repeat):
        resident = engine.residency.models["sd"]
        if "style-a" in resident.adapters:
            engine.residency.drop_adapter(resident, "style-a")
        started = time.perf_counter()
        engine.residency.activate(base, [("style-a", 1.0)])
        loads.append(time.perf_counter() - started)
    load = statistics.median(loads)
    engine.residency.activate(base, [("style-b", 1.0)])  # both loaded from here on
    switches = []
    for index in range(repeat * 10):
        name = ("style-a", "style-b")[index % 2]
        started = time.perf_counter()
        engine.residency.activate(base, [(name, 0.8)])
        switches.append(time.perf_counter() - started)
    switch = statistics.median(switches)
    print(f"LoRA load from disk:   {load * 1000:6.1f} ms  (first use of a LoRA)")
    print(f"LoRA switch, loaded:   {switch * 1000:6.1f} ms  ({load / switch:5.1f}x faster than loading; "
          f"adapters kept: {', '.join(engine.loaded()['sd'])})")


if __name__ == "__main__":
    main()
