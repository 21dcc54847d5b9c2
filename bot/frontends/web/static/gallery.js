// The Gallery tab: every finished image of this user's, newest first, filtered by text or model.

import { $, $$ } from "./dom.js";
import { t } from "./i18n.js";
import { thumbnail } from "./lightbox.js";
import { allJobs, subscribe } from "./store.js";

function renderGallery() {
  const gallery = $("#gallery");
  const done = allJobs().filter((j) => j.status === "done" && j.request)
    .sort((a, b) => b.created_at - a.created_at); // newest first (ids are opaque)
  const images = done.flatMap((job) => job.images.map((image, index) => ({ job, image, index })));
  $("#gallery-empty").hidden = images.length > 0;
  if (gallery.childElementCount !== images.length) {
    gallery.replaceChildren(...images.map(({ job, image, index }) => {
      const figure = document.createElement("figure");
      figure.dataset.model = job.request.model;
      figure.dataset.prompt = job.request.prompt.toLowerCase();
      const thumb = thumbnail(job, index, galleryImages);
      $("img", thumb).loading = "lazy";
      const caption = document.createElement("figcaption");
      const prompt = document.createElement("span");
      prompt.className = "prompt";
      prompt.textContent = job.request.prompt;
      prompt.title = job.request.prompt;
      const meta = document.createElement("span");
      meta.className = "meta";
      const { model, width, height } = job.request;
      meta.textContent = `${t("ui_seed_label", { seed: image.seed })} · ${model} · ${width}x${height}`;
      caption.append(prompt, meta);
      figure.append(thumb, caption);
      figure.galleryItem = { job, index };
      return figure;
    }));
    const select = $("#gallery-model");
    const current = select.value;
    const models = [...new Set(images.map(({ job }) => job.request.model))].sort();
    select.replaceChildren(new Option(t("ui_gallery_all_models"), ""), ...models.map((name) => new Option(name, name)));
    select.value = models.includes(current) ? current : "";
  }
  filterGallery();
}

function filterGallery() {
  const words = $("#gallery-filter").value.trim().toLowerCase().split(/\s+/).filter(Boolean);
  const model = $("#gallery-model").value;
  const figures = $$("#gallery > figure");
  let shown = 0;
  for (const figure of figures) {
    const match = (!model || figure.dataset.model === model)
      && words.every((word) => figure.dataset.prompt.includes(word));
    figure.hidden = !match;
    if (match) shown += 1;
  }
  $("#gallery-no-match").hidden = !figures.length || shown > 0;
  $("#gallery-count").textContent = figures.length ? t("ui_gallery_count", { shown, total: figures.length }) : "";
  $(".filters").hidden = !figures.length;
}

function galleryImages() {
  return $$("#gallery > figure:not([hidden])").map((figure) => figure.galleryItem);
}

export function setupGallery() {
  $("#gallery-filter").addEventListener("input", filterGallery);
  $("#gallery-model").addEventListener("change", filterGallery);
  // Only a finished job changes what the gallery shows; progress (many a second) does not.
  subscribe("jobs", (job) => {
    if (job.status === "done") renderGallery();
  });
  renderGallery();
}
