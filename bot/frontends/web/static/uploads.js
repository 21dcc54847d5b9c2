// Image prompts: a picture from the file picker, the clipboard or a drop becomes the start of the
// next job ("Vary region" adds a mask: mask.js); /describe suggests prompts for it. The prompt box
// shows the picture as one small chip; its strength, the mask editor and Describe open from it in a
// panel over the chat, so the chat keeps its room.

import { upload, api } from "./api.js";
import { $, runPrompt, showError } from "./dom.js";
import { t } from "./i18n.js";
import { addToLog, echo } from "./log.js";
import { clearMask, maskBlob, maskIsEmpty, maskShown, setupMask, showMaskEditor, sizeMask } from "./mask.js";
import { scrollToNewest } from "./scroll.js";
import { get, subscribe } from "./store.js";
import { showTab } from "./tabs.js";

let attached = null; // {handle, width, height, url, name} of the uploaded picture

export function showAttachmentPanel(shown) {
  $("#attachment-panel").hidden = !shown;
  $("#attachment-options").setAttribute("aria-expanded", String(shown));
}

// Describe needs a captioning model on the server: without one it is off, with the reason (and,
// for an admin, how to set it up).
function updateDescribe() {
  const configured = get("options").describe !== false;
  const admin = Boolean(get("session").admin || get("admin").unlocked);
  $("#describe-image").disabled = !configured;
  $("#describe-note").hidden = configured;
  $("#describe-note").textContent = configured ? "" : t(admin ? "ui_describe_off_admin" : "ui_describe_off");
}

async function attachImage(blob, name = "") {
  showError("");
  if (!blob || !(blob.type || "").startsWith("image/")) {
    showError(t("ui_not_an_image"));
    return false;
  }
  $("#attachment-status").textContent = t("ui_uploading");
  let uploaded;
  try {
    uploaded = await upload(blob);
  } catch (error) {
    $("#attachment-status").textContent = "";
    showError(error.message);
    return false;
  }
  removeAttachment();
  attached = { ...uploaded, url: URL.createObjectURL(blob), name: name || blob.name || "" };
  const image = $("#attachment-image");
  image.src = $("#attachment-thumb").src = attached.url;
  $("#attachment-name").textContent = attached.name;
  $("#attachment-name").title = attached.name;
  image.alt = t("ui_attached_image", { width: uploaded.width, height: uploaded.height });
  sizeMask(uploaded.width, uploaded.height);
  $("#attachment-status").textContent = t("ui_attached_image", { width: uploaded.width, height: uploaded.height });
  $("#attachment").hidden = false;
  $("#image-button").setAttribute("aria-pressed", "true");
  return true;
}

// The picture is gone from the prompt box (removed, or sent with a job).
export function removeAttachment() {
  if (attached) URL.revokeObjectURL(attached.url);
  attached = null;
  clearMask();
  showMaskEditor(false);
  showAttachmentPanel(false);
  $("#attachment").hidden = true;
  $("#attachment-status").textContent = "";
  $("#strength").value = "";
  $("#image-button").setAttribute("aria-pressed", "false");
  $("#image-file").value = "";
}

// The size of the attached picture ({width, height}), or null.
export function attachedSize() {
  return attached && { width: attached.width, height: attached.height };
}

// What the next job takes from here: the picture, its strength and a painted mask.
export async function attachmentFields() {
  if (!attached) return {};
  const fields = { image: attached.handle };
  const strength = $("#strength").value.trim();
  if (strength) fields.strength = strength;
  if (maskShown() && !maskIsEmpty()) fields.mask = (await upload(await maskBlob(), "mask")).handle;
  return fields;
}

// "Vary region" on a result: that image becomes the picture, with the mask editor open.
export async function varyRegion(job, index) {
  showTab("chat");
  const response = await fetch(job.images[index].url);
  const name = t("ui_image_of", { index: index + 1, count: job.images.length });
  if (!response.ok || !(await attachImage(await response.blob(), name))) return;
  showMaskEditor(true);
  showAttachmentPanel(true);
  $("#prompt").value = job.request.prompt;
  $("#vary-region").focus({ preventScroll: true });
}

// /describe: prompts the server's captioning model suggests for the attached picture, each a button.
async function describeAttached() {
  if (!attached) return;
  showError("");
  const button = $("#describe-image");
  button.disabled = true;
  try {
    const answer = await api(`/api/describe?image=${encodeURIComponent(attached.handle)}`, { method: "POST" });
    echo("/describe");
    const item = document.createElement("li");
    item.className = "job described";
    const bubble = document.createElement("div");
    bubble.className = "bubble bot";
    const title = document.createElement("p");
    title.textContent = t("ui_describe_title");
    const list = document.createElement("ol");
    for (const prompt of answer.prompts) {
      const entry = document.createElement("li");
      const run = document.createElement("button");
      run.type = "button";
      run.className = "described-prompt";
      run.textContent = prompt;
      run.title = t("ui_describe_run");
      run.addEventListener("click", () => { removeAttachment(); runPrompt(prompt); });
      entry.append(run);
      list.append(entry);
    }
    bubble.append(title, list);
    item.append(bubble);
    addToLog(item);
    scrollToNewest();
  } catch (error) {
    showError(error.message);
  } finally {
    button.disabled = false;
  }
}

function firstImage(items) {
  for (const item of items || []) {
    const file = item.kind === undefined ? item : item.kind === "file" ? item.getAsFile() : null;
    if (file && (file.type || "").startsWith("image/")) return file;
  }
  return null;
}

export function setupImagePrompts() {
  $("#image-button").addEventListener("click", () => $("#image-file").click());
  $("#image-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) attachImage(file);
  });
  $("#attachment-remove").addEventListener("click", removeAttachment);
  $("#attachment-options").addEventListener("click", () => showAttachmentPanel($("#attachment-panel").hidden));
  $("#attachment-panel-close").addEventListener("click", () => {
    showAttachmentPanel(false);
    $("#attachment-options").focus();
  });
  $("#attachment-panel").addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    event.preventDefault();
    event.stopPropagation();
    showAttachmentPanel(false);
    $("#attachment-options").focus();
  });
  subscribe(["options", "session", "admin"], updateDescribe);
  updateDescribe();
  $("#describe-image").addEventListener("click", describeAttached);
  setupMask();
  // A pasted picture (Ctrl+V anywhere on the page) or one dropped on the chat.
  document.addEventListener("paste", (event) => {
    const file = firstImage(event.clipboardData && event.clipboardData.items);
    if (file) {
      event.preventDefault();
      attachImage(file);
    }
  });
  const chat = $("#view-chat");
  chat.addEventListener("dragover", (event) => {
    if ([...(event.dataTransfer?.types || [])].includes("Files")) {
      event.preventDefault();
      chat.classList.add("dropping");
    }
  });
  chat.addEventListener("dragleave", () => chat.classList.remove("dropping"));
  chat.addEventListener("drop", (event) => {
    chat.classList.remove("dropping");
    const file = firstImage(event.dataTransfer && event.dataTransfer.files);
    if (file) {
      event.preventDefault();
      attachImage(file);
    }
  });
}
