"""Service metrics in the Prometheus text format (no client library needed for a handful of lines)."""

from __future__ import annotations

from typing import Any

from bot.core.jobs import STATUSES


def prometheus_text(metrics: dict[str, Any]) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
            lines.append(f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}")

    jobs = metrics.get("jobs", {})
    metric("imagebot_queue_depth", "gauge", "Jobs waiting to run.", [({}, metrics.get("queue_depth", 0))])
    metric("imagebot_jobs", "gauge", "Jobs in the store by status.",
           [({"status": status}, jobs.get(status, 0)) for status in STATUSES])
    per_step = metrics.get("seconds_per_step", {})
    metric("imagebot_seconds_per_step", "gauge", "Seconds per denoising step per image, by model (moving average).",
           [({"model": model}, round(value, 6)) for model, value in sorted(per_step.items())])
    per_image = metrics.get("seconds_per_image", {})
    metric("imagebot_seconds_per_image", "gauge", "Seconds per image, by model (moving average).",
           [({"model": model}, round(value, 6)) for model, value in sorted(per_image.items())])
    metric("imagebot_batches_total", "counter", "Pipeline calls made.", [({}, metrics.get("batches", 0))])
    metric("imagebot_images_total", "counter", "Images generated.", [({}, metrics.get("images", 0))])
    metric("imagebot_batch_images_total", "counter", "Batches run, by number of images in the batch.",
           [({"images": str(size)}, count) for size, count in sorted(metrics.get("batch_sizes", {}).items())])
    metric("imagebot_model_loads_total", "counter", "Models (and LoRA adapters) loaded.",
           [({}, metrics.get("model_loads", 0))])
    metric("imagebot_model_load_seconds_total", "counter", "Seconds spent loading models.",
           [({}, round(metrics.get("model_load_seconds", 0.0), 3))])
    metric("imagebot_oom_retries_total", "counter", "Batches split after running out of GPU memory.",
           [({}, metrics.get("oom_retries", 0))])
    metric("imagebot_worker_failed_passes_total", "counter",
           "Worker passes that failed (a database write, a bug) and were retried after a back-off.",
           [({}, metrics.get("worker_failed_passes", 0))])
    metric("imagebot_hung_generations_total", "counter", "Generations abandoned after hanging past the timeout.",
           [({}, metrics.get("hung_generations", 0))])
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
