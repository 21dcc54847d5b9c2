// The lightbox: one image large, its parameters and actions; ← → step through the list it was
// opened on (the chat's images or the gallery's shown ones), Esc closes. And the thumbnails that
// open it.

import { derive } from "./actions.js";
import { reuse, startRemix } from "./composer.js";
import { $, button, FINE_POINTER, sharpIfSmall } from "./dom.js";
import { t } from "./i18n.js";
import { copy, downloadLink } from "./menu.js";
import { varyRegion } from "./uploads.js";

let shown = null; // {items: [{job, index}], position, opener}

// A button showing one image; it opens the lightbox on the list of images `list()` returns.
export function thumbnail(job, index, list) {
  const image = job.images[index];
  const thumb = document.createElement("button");
  thumb.type = "button";
  thumb.className = "thumb";
  thumb.setAttribute("aria-label", t("ui_open_image", { index: index + 1, prompt: job.request.prompt }));
  const img = document.createElement("img");
  img.src = image.url;
  img.alt = `${job.request.prompt} (${t("ui_seed_label", { seed: image.seed })})`;
  img.width = job.request.width;
  img.height = job.request.height;
  sharpIfSmall(img, job.request.width);
  thumb.append(img);
  thumb.addEventListener("click", () => {
    const items = list();
    const position = items.findIndex((item) => item.job.id === job.id && item.index === index);
    openLightbox(items, Math.max(position, 0), thumb);
  });
  return thumb;
}

function openLightbox(items, position, opener) {
  if (!items.length) return;
  shown = { items, position, opener };
  showImage();
  const dialog = $("#lightbox");
  if (!dialog.open) dialog.showModal();
  $("#lb-close").focus();
}

export function closeLightbox() {
  const dialog = $("#lightbox");
  if (dialog.open) dialog.close();
}

function onClosed() {
  const opener = shown?.opener;
  shown = null;
  $("#lb-image").removeAttribute("src");
  if (opener && opener.isConnected && !opener.closest("[hidden]")) opener.focus({ preventScroll: true });
}

function move(step) {
  if (!shown || shown.items.length < 2) return;
  shown.position = (shown.position + step + shown.items.length) % shown.items.length;
  showImage();
}

function showImage() {
  const { items, position } = shown;
  const { job, index } = items[position];
  const image = job.images[index];
  const request = job.request;
  $("#lightbox-title").textContent = t("ui_image_of", { index: position + 1, count: items.length });
  const img = $("#lb-image");
  img.src = image.url;
  img.alt = `${request.prompt} (${t("ui_seed_label", { seed: image.seed })})`;
  img.width = request.width;
  img.height = request.height;
  img.style.setProperty("--ratio", String(request.width / request.height));
  img.classList.remove("small");
  sharpIfSmall(img, request.width);
  $("#lb-prompt").textContent = request.prompt;
  const params = [
    [t("ui_param_seed"), image.seed],
    [t("ui_param_size"), `${request.width}x${request.height}`],
    [t("ui_model"), request.model],
    [t("ui_steps"), request.steps],
    [t("ui_guidance"), request.guidance],
    [t("ui_scheduler"), request.scheduler],
  ];
  if (request.negative_prompt) params.push([t("ui_negative"), request.negative_prompt]);
  $("#lb-params").replaceChildren(...params.flatMap(([name, value]) => {
    const term = document.createElement("dt");
    term.textContent = name;
    const detail = document.createElement("dd");
    detail.textContent = String(value);
    return [term, detail];
  }));
  const run = (action) => () => {
    closeLightbox();
    derive(job.id, action, index).then(() => FINE_POINTER && $("#prompt").focus({ preventScroll: true }));
  };
  const closing = (then) => () => { closeLightbox(); then(); };
  $("#lb-actions").replaceChildren(
    downloadLink(job, index, t("ui_download")),
    button(t("ui_upscale"), run("upscale"), "upscale"),
    button(t("ui_vary_subtle"), run("vary_subtle"), "vary-subtle"),
    button(t("ui_vary_strong"), run("vary_strong"), "variation"),
    button(t("ui_remix"), closing(() => startRemix(job, index)), "remix"),
    button(t("ui_copy_seed", { seed: image.seed }), (event) => copy(String(image.seed), event.currentTarget),
           "copy-seed"),
    button(t("ui_reuse"), closing(() => reuse(request)), "reuse"),
    button(t("ui_vary_region"), closing(() => varyRegion(job, index)), "vary-region"),
  );
  const single = items.length < 2;
  $("#lb-prev").hidden = $("#lb-next").hidden = single;
}

export function setupLightbox() {
  const lightbox = $("#lightbox");
  lightbox.addEventListener("close", onClosed);
  lightbox.addEventListener("keydown", (event) => {
    if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
      event.preventDefault();
      move(event.key === "ArrowRight" ? 1 : -1);
    }
  });
  lightbox.addEventListener("click", (event) => { if (event.target === lightbox) closeLightbox(); }); // the backdrop
  $("#lb-close").addEventListener("click", closeLightbox);
  $("#lb-prev").addEventListener("click", () => move(-1));
  $("#lb-next").addEventListener("click", () => move(1));
}
