// Image prompts on the page: a picture from the file picker, the clipboard or a drop becomes the
// start of the next job, and "Vary region" paints a mask over it (white in the mask is redrawn).
// Loaded after app.js, whose helpers ($, t, state, showError, closeLightbox) it uses.
"use strict";

const attachment = {
  current: null, // {handle, width, height, url} of the uploaded picture
  painting: false,
  erasing: false,
  painted: false,
  last: null, // the previous point of a stroke, in mask pixels
};

async function uploadImage(blob, kind = "image") {
  let response;
  try {
    response = await fetch(`/api/uploads${kind === "mask" ? "?kind=mask" : ""}`, {
      method: "POST",
      headers: { "X-Imagebot-User": state.user, "Accept-Language": navigator.language || "en",
                 "Content-Type": blob.type || "image/png" },
      body: blob,
    });
  } catch {
    throw new Error(t("ui_network_error"));
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

async function attachImage(blob) {
  showError("");
  if (!blob || !(blob.type || "").startsWith("image/")) {
    showError(t("ui_not_an_image"));
    return false;
  }
  $("#attachment-status").textContent = t("ui_uploading");
  let uploaded;
  try {
    uploaded = await uploadImage(blob);
  } catch (error) {
    $("#attachment-status").textContent = "";
    showError(error.message);
    return false;
  }
  removeAttachment();
  attachment.current = { ...uploaded, url: URL.createObjectURL(blob) };
  const image = $("#attachment-image");
  image.src = attachment.current.url;
  image.alt = t("ui_attached_image", { width: uploaded.width, height: uploaded.height });
  const canvas = $("#mask-canvas");
  canvas.width = uploaded.width; // the mask has the picture's own pixels
  canvas.height = uploaded.height;
  canvas.style.setProperty("--ratio", String(uploaded.width / uploaded.height));
  $("#attachment-status").textContent = t("ui_attached_image", { width: uploaded.width, height: uploaded.height });
  $("#attachment").hidden = false;
  $("#image-button").setAttribute("aria-pressed", "true");
  return true;
}

function removeAttachment() {
  if (attachment.current) URL.revokeObjectURL(attachment.current.url);
  attachment.current = null;
  clearMask();
  showMaskEditor(false);
  $("#attachment").hidden = true;
  $("#attachment-status").textContent = "";
  $("#strength").value = "";
  $("#image-button").setAttribute("aria-pressed", "false");
  $("#image-file").value = "";
}

// --- the mask ----------------------------------------------------------------------------------------

function showMaskEditor(shown) {
  $("#mask-canvas").hidden = !shown;
  $("#mask-tools").hidden = !shown;
  $("#vary-region").setAttribute("aria-pressed", String(shown));
  $("#mask-note").hidden = !shown;
}

function maskContext() {
  return $("#mask-canvas").getContext("2d", { willReadFrequently: true });
}

function clearMask() {
  const canvas = $("#mask-canvas");
  maskContext().clearRect(0, 0, canvas.width, canvas.height);
  attachment.painted = false;
}

function maskPoint(event) {
  const canvas = $("#mask-canvas");
  const box = canvas.getBoundingClientRect();
  return { x: (event.clientX - box.left) * canvas.width / box.width,
           y: (event.clientY - box.top) * canvas.height / box.height };
}

function paint(to) {
  const canvas = $("#mask-canvas");
  const context = maskContext();
  const from = attachment.last || to;
  context.globalCompositeOperation = attachment.erasing ? "destination-out" : "source-over";
  context.strokeStyle = context.fillStyle = "#ffffff";
  context.lineCap = "round";
  context.lineWidth = Math.max(2, Math.max(canvas.width, canvas.height) / 8);
  context.beginPath();
  context.moveTo(from.x, from.y);
  context.lineTo(to.x, to.y);
  context.stroke();
  attachment.last = to;
  if (!attachment.erasing) attachment.painted = true;
}

function startStroke(event) {
  event.preventDefault();
  $("#mask-canvas").setPointerCapture(event.pointerId);
  attachment.painting = true;
  attachment.last = null;
  paint(maskPoint(event));
}

function moveStroke(event) {
  if (attachment.painting) paint(maskPoint(event));
}

function endStroke() {
  attachment.painting = false;
  attachment.last = null;
}

function maskIsEmpty() {
  const canvas = $("#mask-canvas");
  const pixels = maskContext().getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) return false;
  return true;
}

function maskBlob() {
  // What was painted becomes white, the rest black: the mask the API takes.
  const canvas = $("#mask-canvas");
  const painted = maskContext().getImageData(0, 0, canvas.width, canvas.height);
  const pixels = painted.data;
  for (let i = 0; i < pixels.length; i += 4) {
    const value = pixels[i + 3] > 0 ? 255 : 0;
    pixels[i] = pixels[i + 1] = pixels[i + 2] = value;
    pixels[i + 3] = 255;
  }
  const out = document.createElement("canvas");
  out.width = canvas.width;
  out.height = canvas.height;
  out.getContext("2d").putImageData(painted, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

// --- what the next job takes from here (called by app.js when the prompt is sent) ---------------------

async function attachmentFields() {
  if (!attachment.current) return {};
  const fields = { image: attachment.current.handle };
  const strength = $("#strength").value.trim();
  if (strength) fields.strength = strength;
  if (!$("#mask-canvas").hidden && !maskIsEmpty()) fields.mask = (await uploadImage(await maskBlob(), "mask")).handle;
  return fields;
}

function attachmentSent() {
  removeAttachment();
}

// "Vary region" on a result: that image becomes the picture, with the mask editor open.
async function varyRegion(job, index) {
  closeLightbox();
  showTab("chat");
  const response = await fetch(job.images[index].url);
  if (!response.ok || !(await attachImage(await response.blob()))) return;
  showMaskEditor(true);
  $("#prompt").value = job.request.prompt;
  $("#vary-region").focus({ preventScroll: true });
}

// /describe: prompts the server's captioning model suggests for the attached picture, each a button.
async function describeAttached() {
  if (!attachment.current) return;
  showError("");
  const button = $("#describe-image");
  button.disabled = true;
  try {
    const answer = await api(`/api/describe?image=${encodeURIComponent(attachment.current.handle)}`, { method: "POST" });
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
      run.addEventListener("click", () => { removeAttachment(); runExample(prompt); });
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

// --- wiring ------------------------------------------------------------------------------------------

function firstImage(items) {
  for (const item of items || []) {
    const file = item.kind === undefined ? item : item.kind === "file" ? item.getAsFile() : null;
    if (file && (file.type || "").startsWith("image/")) return file;
  }
  return null;
}

function setupImagePrompts() {
  $("#image-button").addEventListener("click", () => $("#image-file").click());
  $("#image-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) attachImage(file);
  });
  $("#attachment-remove").addEventListener("click", removeAttachment);
  $("#describe-image").addEventListener("click", describeAttached);
  $("#vary-region").addEventListener("click", () => {
    const shown = $("#mask-canvas").hidden;
    showMaskEditor(shown);
    if (!shown) clearMask();
  });
  const tool = (erasing) => () => {
    attachment.erasing = erasing;
    $("#mask-brush").setAttribute("aria-pressed", String(!erasing));
    $("#mask-eraser").setAttribute("aria-pressed", String(erasing));
  };
  $("#mask-brush").addEventListener("click", tool(false));
  $("#mask-eraser").addEventListener("click", tool(true));
  $("#mask-clear").addEventListener("click", clearMask);
  const canvas = $("#mask-canvas");
  canvas.addEventListener("pointerdown", startStroke);
  canvas.addEventListener("pointermove", moveStroke);
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);
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

setupImagePrompts();
