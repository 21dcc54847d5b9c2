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
    metric("imagebot_executor_capacity", "gauge", "Batches the executor runs at once (devices, or Ray replica slots).",
           [({}, metrics.get("executor_capacity", 1))])
    metric("imagebot_batches_in_flight", "gauge", "Batches on the executor now.", [({}, metrics.get("batches_in_flight", 0))])
    metric("imagebot_jobs_requeued_total", "counter", "Jobs queued again after the worker running them was lost.",
           [({}, metrics.get("jobs_requeued", 0))])
    if "ray_calls" in metrics:
        _ray_metrics(metric, metrics)
    return "\n".join(lines) + "\n"


def _ray_metrics(metric, metrics: dict[str, Any]) -> None:
    placement = metrics.get("ray_placement", {})
    metric("imagebot_ray_replicas", "gauge", "Ray Serve replicas that have answered.", [({}, len(placement))])
    metric("imagebot_ray_replica_variant", "gauge", "Variants loaded per replica (1 = loaded), as of its last reply.",
           [({"replica": replica, "node": node, "model": name}, 1)
            for replica, (node, resident) in sorted(placement.items()) for name in resident])
    metric("imagebot_ray_calls_total", "counter", "Batches sent to Ray Serve replicas.", [({}, metrics["ray_calls"])])
    metric("imagebot_ray_lost_calls_total", "counter", "Calls lost with their replica or node; their jobs were retried.",
           [({}, metrics.get("ray_lost_calls", 0))])
    metric("imagebot_ray_unavailable_total", "counter", "Times the Ray cluster could not be reached.",
           [({}, metrics.get("ray_unavailable", 0))])
    metric("imagebot_ray_dispatch_seconds", "gauge",
           "Mean seconds of a call not spent generating (routing, transfer, writing images here).",
           [({}, round(metrics.get("ray_dispatch_seconds_mean", 0.0), 6))])


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
