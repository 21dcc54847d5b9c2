// Job cards in the chat log: the prompt, then position, progress and preview, then the images and
// their buttons. A card follows its job in the store (the event stream and the answers of the API
// change it there).

import { cancel, derive } from "./actions.js";
import { $, $$, button, group } from "./dom.js";
import { t } from "./i18n.js";
import { thumbnail } from "./lightbox.js";
import { addToLog } from "./log.js";
import { moreMenu } from "./menu.js";
import { ACTIVE, job as storedJob, subscribe } from "./store.js";

const cards = new Map(); // job id -> its card

export function setupChat() {
  subscribe("jobs", (job) => {
    if (job.request) render(job); // a job heard of before its request is known waits for it
  });
}

function jobCard(job) {
  let card = cards.get(job.id);
  if (card) return card;
  card = $("#job-template").content.firstElementChild.cloneNode(true);
  card.dataset.job = job.id;
  cards.set(job.id, card);
  addToLog(card);
  return card;
}

// What a job started from an image was asked for, as its card says it: a mask makes it "Vary region"
// (inpainting); else how it was derived (a job from the history has no action: guessed).
const DERIVED_NOTE = { upscale: "ui_note_upscale", vary_subtle: "ui_note_vary_subtle", vary_strong: "ui_note_variation",
                       remix: "ui_note_remix", image: "ui_note_from_image" };

function describe(request, action) {
  let text = request.prompt;
  if (request.negative_prompt) text += ` --no ${request.negative_prompt}`;
  let note = null;
  if (request.upscale) note = "ui_note_upscale";
  else if (request.mask_image) note = "ui_note_vary_region";
  else if (request.init_image) note = DERIVED_NOTE[action] || "ui_note_variation";
  if (note) text += ` (${t(note)})`;
  return `${text}  —  ${request.width}x${request.height}, ${request.model}`;
}

function render(data) {
  const card = jobCard(data);
  const asked = $(".bubble.user", card);
  const text = describe(data.request, data.action);
  if (asked.textContent !== text) asked.textContent = text;
  const note = $(".note", card);
  if (note.textContent !== (data.note || "")) note.textContent = data.note || "";
  note.hidden = !data.note;
  const status = $(".status", card);
  const bar = $(".bar", card);
  status.classList.toggle("failed", data.status === "failed");
  card.dataset.status = data.status;
  if (data.status === "queued") {
    status.textContent = t("ui_queued", { position: data.position ?? "?" }) +
      (data.eta ? ` · ${t("ui_eta", { seconds: Math.round(data.eta) })}` : "");
  } else if (data.status === "running") {
    const progress = data.progress || {};
    status.textContent = progress.total ? t("ui_progress", progress) : t("ui_starting");
    const percent = progress.total ? Math.round((100 * progress.step) / progress.total) : 0;
    $("span", bar).style.width = `${percent}%`;
    bar.setAttribute("aria-valuenow", String(percent));
  } else if (data.status === "done") {
    status.textContent = t("ui_done");
  } else if (data.status === "cancelled") {
    status.textContent = t("ui_cancelled");
  } else if (data.status === "failed") {
    status.textContent = t("ui_failed", { error: data.error || "?" });
  }
  bar.hidden = !ACTIVE.includes(data.status);
  const preview = $(".preview", card);
  if (!ACTIVE.includes(data.status)) {
    preview.hidden = true;
    preview.removeAttribute("src"); // a finished job's preview is gone: never ask for it again
  } else if (data.preview && preview.getAttribute("src") !== data.preview) {
    preview.src = data.preview;
    preview.hidden = false;
  }
  renderImages(data, card);
  renderActions(data, card);
}

function renderImages(job, card) {
  const box = $(".images", card);
  if (job.status !== "done" || box.childElementCount) return;
  box.style.setProperty("--count", String(Math.min(job.images.length, 4)));
  box.classList.toggle("many", job.images.length > 1);
  job.images.forEach((image, index) => {
    const thumb = thumbnail(job, index, chatImages);
    thumb.dataset.index = String(index);
    box.append(thumb);
  });
}

// The images of the chat, in the order of the log: what the lightbox steps through.
function chatImages() {
  return $$("#log > li[data-job]").flatMap((card) => {
    const job = storedJob(card.dataset.job);
    return job && job.status === "done" ? job.images.map((_, index) => ({ job, index })) : [];
  });
}

function renderActions(job, card) {
  const box = $(".actions", card);
  // Rebuild only when the set of buttons changes: progress arrives several times a second, and a
  // button replaced under the pointer or the keyboard focus swallows the click.
  const phase = ACTIVE.includes(job.status) ? "active" : job.status;
  if (box.dataset.phase === phase) return;
  box.dataset.phase = phase;
  box.replaceChildren();
  if (phase === "active") {
    box.append(button(t("ui_cancel"), () => cancel(job.id), "cancel"));
    return;
  }
  if (job.status === "done") {
    const upscale = group("upscale");
    const vary = group("variations");
    job.images.forEach((_, index) => {
      const n = { index: index + 1 };
      const u = button(`U${n.index}`, () => derive(job.id, "upscale", index), "upscale", t("ui_upscale_image", n));
      const v = button(`V${n.index}`, () => derive(job.id, "vary_strong", index), "variation", t("ui_variation_image", n));
      u.dataset.index = v.dataset.index = String(index);
      upscale.append(u);
      vary.append(v);
    });
    box.append(upscale, vary);
  }
  box.append(button(t("ui_reroll"), () => derive(job.id, "reroll"), "reroll"), moreMenu(job));
}
