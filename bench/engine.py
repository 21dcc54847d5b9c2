"""Engine benchmark on a tiny random-weight model (CPU or GPU), all numbers from one run.

    python bench/engine.py [--steps 20] [--repeat 3]

Prints:
  batching   images/s of one generate() call with 8 images over 8 single-image calls
  overhead   time of generate() for one image over calling the same diffusers pipeline directly
  invariance batched throughput with batch-invariant kernels over without (CPU default is on)
  loras      switching between two LoRAs that stay loaded (set_adapters) against loading one from
             disk, and one image with two LoRAs over one without
"""

from __future__ import annotations

import argparse
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

PROMPTS = ["a red circle", "a blue square", "a green tree", "a yellow sun",
           "a black cat", "a white boat", "an orange fox", "a purple house"]


def median_seconds(run, repeat: int) -> float:
    run()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    models = Path(tempfile.mkdtemp()) / "models"
    save_tiny_pipeline(models / "tiny")
    (models / "tiny" / "variant.toml").write_text('kind = "pipeline"\n')
    for seed, name in ((1, "style-a"), (2, "style-b")):
        save_tiny_lora(models / "tiny", models / name, seed=seed)
        (models / name / "variant.toml").write_text('kind = "lora"\nbase = "tiny"\n')
    limits = Limits(min_side=32)

    def make_engine(invariant: str) -> Engine:
        registry = Registry(models)
        registry.scan()
        return Engine(registry, EngineConfig(max_batch=8, batch_invariant=invariant), allow_download=False)

    def requests(engine: Engine, count: int):
        defaults = engine.registry.ready_defaults()
        return [resolve(parse_prompt(f"{PROMPTS[i]} --seed {i} --steps {args.steps}"), defaults, "tiny", limits)
                for i in range(count)]

    engine = make_engine("auto")
    batch = requests(engine, 8)
    singles = median_seconds(lambda: [engine.generate([r]) for r in batch], args.repeat)
    batched = median_seconds(lambda: engine.generate(batch), args.repeat)

    # The same pipeline object the engine uses, called directly as diffusers documents it.
    engine.generate(batch[:1])
    pipe = engine.residency.models["tiny"].pipe
    one = batch[0]

    def direct() -> None:
        with torch.inference_mode():
            pipe(one.prompt, negative_prompt=one.negative_prompt, num_inference_steps=one.steps,
                 guidance_scale=one.guidance, width=one.width, height=one.height,
                 generator=torch.Generator().manual_seed(one.seed))

    direct_seconds = median_seconds(direct, args.repeat * 3)
    engine_seconds = median_seconds(lambda: engine.generate([one]), args.repeat * 3)

    plain = make_engine("off")
    plain_batch = requests(plain, 8)
    plain_batched = median_seconds(lambda: plain.generate(plain_batch), args.repeat)

    print(f"device {engine.device}, dtype {engine.dtype}, tiny model 64x64, {args.steps} steps, "
          f"batch_invariant={'on' if engine.device.type == 'cpu' else 'off'} (engine default)")
    print(f"8 single calls:        {singles:6.2f} s  ({8 / singles:5.2f} images/s)")
    print(f"1 call of 8 images:    {batched:6.2f} s  ({8 / batched:5.2f} images/s)")
    print(f"batching speed-up:     {singles / batched:6.2f}x")
    print(f"direct pipeline call:  {direct_seconds * 1000:6.1f} ms")
    print(f"engine.generate():     {engine_seconds * 1000:6.1f} ms")
    print(f"engine overhead:       {engine_seconds / direct_seconds:6.3f}x ({(engine_seconds / direct_seconds - 1) * 100:+.1f}%)")
    print(f"batch of 8 without batch-invariant kernels: {plain_batched:6.2f} s "
          f"(invariance costs {batched / plain_batched:5.2f}x)")
    lora_table(engine, args.repeat)


def lora_table(engine: Engine, repeat: int) -> None:
    """LoRAs per request: what switching costs once both adapters are loaded, next to loading one."""
    loads = []
    for _ in range(repeat):
        spec = engine.registry.get("style-a")
        resident = engine.residency.models["tiny"]
        if "style-a" in resident.adapters:
            engine.residency.drop_adapter(resident, "style-a")
        started = time.perf_counter()
        engine.residency.activate(engine.registry.get("tiny"), [("style-a", 1.0)])
        loads.append(time.perf_counter() - started)
    load = statistics.median(loads)
    engine.residency.activate(engine.registry.get("tiny"), [("style-b", 1.0)])  # both loaded from here on
    switches = []
    for index in range(repeat * 10):
        name = ("style-a", "style-b")[index % 2]
        started = time.perf_counter()
        engine.residency.activate(engine.registry.get("tiny"), [(name, 0.8)])
        switches.append(time.perf_counter() - started)
    switch = statistics.median(switches)
    print(f"LoRA load from disk:   {load * 1000:6.1f} ms  (first use of a LoRA)")
    print(f"LoRA switch, loaded:   {switch * 1000:6.1f} ms  ({load / switch:5.1f}x faster than loading; "
          f"adapters kept: {', '.join(engine.loaded()['tiny'])})")


if __name__ == "__main__":
    main()
