// The chat page: plain JavaScript over the HTTP API, no build step, no external assets.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const state = {
  user: localStorage.getItem("imagebot.user") || newUserId(),
  texts: {},
  jobs: new Map(), // id -> {data, card, source}
  models: [],
  defaultModel: "",
  adminToken: sessionStorage.getItem("imagebot.admin") || "",
};
localStorage.setItem("imagebot.user", state.user);

function newUserId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return "browser-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// --- texts (the server's message catalogue, in the browser's language) ---------------------------

function t(key, params = {}) {
  const template = state.texts[key] || key;
  return template.replace(/\{(\w+)\}/g, (_, name) => (name in params ? String(params[name]) : `{${name}}`));
}

async function loadTexts() {
  const response = await fetch(`/api/messages?locale=${encodeURIComponent(navigator.language || "en")}`);
  state.texts = await response.json();
  document.documentElement.lang = (navigator.language || "en").split("-")[0];
  for (const element of document.querySelectorAll("[data-t]")) element.textContent = t(element.dataset.t);
  for (const element of document.querySelectorAll("[data-t-placeholder]")) element.placeholder = t(element.dataset.tPlaceholder);
  document.title = t("ui_title");
}

// --- API -----------------------------------------------------------------------------------------

async function api(path, { method = "GET", body, admin = false } = {}) {
  const headers = { "X-Imagebot-User": state.user, "Accept-Language": navigator.language || "en" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (admin && state.adminToken) headers["Authorization"] = `Bearer ${state.adminToken}`;
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new Error(t("ui_network_error"));
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

// --- the chat log --------------------------------------------------------------------------------

// A line of the chat log: `who` is "bot" or "user" (the styles tell them apart).
function addBubble(text, who) {
  const item = document.createElement("li");
  item.className = "job";
  const bubble = document.createElement("p");
  bubble.className = `bubble ${who}`;
  bubble.textContent = text;
  item.append(bubble);
  $("#log").append(item);
  return item;
}

function say(text) {
  addBubble(text, "bot").scrollIntoView({ block: "end" });
}

function echo(text) {
  addBubble(text, "user");
}

function jobCard(job) {
  const entry = state.jobs.get(job.id);
  if (entry) return entry.card;
  const card = $("#job-template").content.firstElementChild.cloneNode(true);
  card.dataset.job = job.id;
  $(".bubble.user", card).textContent = describe(job.request);
  $("#log").append(card);
  state.jobs.set(job.id, { data: job, card, source: null });
  return card;
}

function describe(request) {
  let text = request.prompt;
  if (request.negative_prompt) text += ` --no ${request.negative_prompt}`;
  if (request.init_image) text += request.count === 1 && request.strength < 0.5 ? " (upscale)" : " (variation)";
  return `${text}  —  ${request.width}x${request.height}, ${request.model}`;
}

function render(job) {
  const entry = state.jobs.get(job.id) || { card: jobCard(job) };
  entry.data = { ...(entry.data || {}), ...job };
  const data = entry.data;
  const card = entry.card;
  const status = $(".status", card);
  const bar = $(".bar", card);
  status.classList.toggle("failed", data.status === "failed");
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
  bar.hidden = !["queued", "running"].includes(data.status);
  if (!["queued", "running"].includes(data.status)) $(".preview", card).hidden = true;
  renderImages(data, card);
  renderActions(data, card);
  renderGallery();
}

function renderImages(job, card) {
  const box = $(".images", card);
  if (job.status !== "done" || box.childElementCount) return;
  if (job.grid) {
    const grid = document.createElement("a");
    grid.className = "button grid-link";
    grid.href = job.grid;
    grid.target = "_blank";
    grid.textContent = t("ui_grid");
    $(".actions", card).before(grid);
  }
  job.images.forEach((image, index) => {
    const figure = document.createElement("figure");
    const link = imageLink(job, image);
    const img = $("img", link);
    img.width = job.request.width;
    img.height = job.request.height;
    const caption = document.createElement("figcaption");
    const download = document.createElement("a");
    download.className = "button";
    download.href = image.url;
    download.download = `imagebot-${job.id}-${index + 1}.png`;
    download.textContent = t("ui_download");
    caption.append(
      download,
      button(t("ui_variation"), () => derive(job.id, "variation", index), "variation"),
      button(t("ui_upscale"), () => derive(job.id, "upscale", index), "upscale"),
      button(t("ui_copy_seed", { seed: image.seed }), (event) => copy(String(image.seed), event.target), "copy-seed"),
    );
    figure.append(link, caption);
    box.append(figure);
  });
}

function renderActions(job, card) {
  const box = $(".actions", card);
  box.replaceChildren();
  if (["queued", "running"].includes(job.status)) {
    box.append(button(t("ui_cancel"), () => cancel(job.id), "cancel"));
    return;
  }
  box.append(
    button(t("ui_reroll"), () => derive(job.id, "reroll"), "reroll"),
    button(t("ui_reuse"), () => reuse(job.request), "reuse"),
    button(t("ui_copy_params"), (event) => copy(parametersText(job), event.target), "copy-params"),
  );
}

function button(label, onClick, name) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = label;
  element.dataset.action = name;
  element.addEventListener("click", onClick);
  return element;
}

function parametersText(job) {
  const r = job.request;
  const seed = job.images.length ? job.images[0].seed : r.seed;
  let text = r.prompt;
  if (r.negative_prompt) text += `\nNegative prompt: ${r.negative_prompt}`;
  return `${text}\nSteps: ${r.steps}, Sampler: ${r.scheduler}, CFG scale: ${r.guidance}, Seed: ${seed}, ` +
    `Size: ${r.width}x${r.height}, Model: ${r.model}`;
}

async function copy(text, target) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = document.createElement("textarea"); // clipboard API needs a secure context
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  target.dataset.label ??= target.textContent; // the label before any "Copied"
  target.textContent = t("ui_copied");
  clearTimeout(target.copiedTimer);
  target.copiedTimer = setTimeout(() => (target.textContent = target.dataset.label), 1200);
}

function reuse(request) {
  $("#prompt").value = request.prompt;
  $("#negative").value = request.negative_prompt || "";
  $("#model").value = request.model;
  $("#size").value = `${request.width}x${request.height}`;
  $("#aspect").value = "";
  $("#steps").value = request.steps;
  $("#guidance").value = request.guidance;
  $("#seed").value = request.seed;
  $("#count").value = request.count;
  $("#scheduler").value = request.scheduler;
  $("#advanced").open = true;
  $("#prompt").focus();
}

// --- following jobs (server-sent events) ------------------------------------------------------------

function follow(id) {
  const entry = state.jobs.get(id);
  if (!entry || entry.source) return;
  const source = new EventSource(`/api/jobs/${id}/events`);
  entry.source = source;
  const update = (handler) => (event) => handler(JSON.parse(event.data));
  source.addEventListener("state", update((job) => render(job)));
  source.addEventListener("queued", update((e) => render({ id, status: "queued", position: e.position, eta: e.eta })));
  source.addEventListener("position", update((e) => render({ id, status: "queued", position: e.position })));
  source.addEventListener("started", update(() => render({ id, status: "running", progress: null })));
  source.addEventListener("progress", update((e) => {
    render({ id, status: "running", progress: { step: e.step, total: e.total } });
    if (e.preview_url) {
      const preview = $(".preview", state.jobs.get(id).card);
      preview.src = e.preview_url;
      preview.hidden = false;
    }
  }));
  for (const name of ["done", "failed", "cancelled"]) {
    source.addEventListener(name, update((job) => {
      render(job);
      source.close();
      entry.source = null;
    }));
  }
  source.onerror = () => {
    // The browser reconnects by itself; a finished job's stream simply ends.
    if (["done", "failed", "cancelled"].includes(entry.data.status)) {
      source.close();
      entry.source = null;
    }
  };
}

// --- actions ------------------------------------------------------------------------------------

function showError(message) {
  const box = $("#form-error");
  box.textContent = message;
  box.hidden = !message;
}

async function submitPrompt(prompt) {
  const body = { prompt };
  for (const name of ["negative_prompt", "model", "aspect", "size", "steps", "guidance", "seed", "count", "scheduler"]) {
    const value = $(`#composer [name="${name}"]`).value.trim();
    if (value !== "") body[name] = value;
  }
  const created = await api("/api/jobs", { method: "POST", body });
  start(created);
}

function start(created) {
  const job = { id: created.id, status: "queued", position: created.position, eta: created.eta,
                request: created.request, images: [], grid: null };
  jobCard(job);
  render(job);
  state.jobs.get(job.id).card.scrollIntoView({ block: "end" });
  follow(job.id);
}

async function derive(id, action, index = 0) {
  showError("");
  try {
    start(await api(`/api/jobs/${id}/${action}`, { method: "POST", body: { index } }));
  } catch (error) {
    showError(error.message);
  }
}

async function cancel(id) {
  try {
    await api(`/api/jobs/${id}`, { method: "DELETE" });
  } catch (error) {
    showError(error.message);
  }
}

async function runCommand(text) {
  const [command, ...rest] = text.split(/\s+/);
  const argument = rest.join(" ").trim();
  switch (command.toLowerCase()) {
    case "/imagine":
      return submitPrompt(argument);
    case "/help":
      echo(text);
      return say(t("ui_help"));
    case "/model":
    case "/models": {
      echo(text);
      await loadModels();
      const names = state.models.filter((m) => m.status === "ready").map((m) => m.name);
      say(t("ui_models_list", { default: state.defaultModel, models: names.join(", ") || t("ui_none") }));
      if (argument && state.adminToken) {
        await api("/api/models/default", { method: "PUT", body: { name: argument }, admin: true });
        await loadModels();
        return say(t("ui_model_set", { name: argument }));
      }
      if (argument) say(t("ui_model_admin_hint"));
      return;
    }
    case "/queue": {
      echo(text);
      const waiting = [...state.jobs.values()].map((e) => e.data).filter((j) => ["queued", "running"].includes(j.status));
      if (!waiting.length) return say(t("ui_queue_empty"));
      return say(waiting.map((j) => t("ui_queue_item", {
        id: j.id, status: j.status, detail: j.status === "queued" ? `#${j.position ?? "?"}` : "",
      }).trim()).join("\n"));
    }
    default:
      throw new Error(t("ui_unknown_command", { command }));
  }
}

async function onSubmit(event) {
  event.preventDefault();
  const input = $("#prompt");
  const text = input.value.trim();
  if (!text) return;
  showError("");
  $("#send").disabled = true;
  try {
    if (text.startsWith("/")) await runCommand(text);
    else await submitPrompt(text);
    input.value = "";
  } catch (error) {
    showError(error.message);
  } finally {
    $("#send").disabled = false;
    input.focus();
  }
}

// --- models, options, history, gallery, admin ---------------------------------------------------------

async function loadOptions() {
  const options = await api("/api/options");
  const scheduler = $("#scheduler");
  scheduler.replaceChildren(new Option(t("ui_auto"), ""), ...options.schedulers.map((name) => new Option(name, name)));
  $("#steps").max = options.limits.max_steps;
  $("#count").max = options.limits.max_images;
  $("#guidance").max = options.limits.max_guidance;
}

async function loadModels() {
  const data = await api("/api/models");
  state.models = data.models;
  state.defaultModel = data.default;
  const select = $("#model");
  const current = select.value;
  select.replaceChildren(new Option(t("ui_model_default", { name: data.default }), ""),
    ...data.models.filter((m) => m.status === "ready").map((m) => new Option(m.name, m.name)));
  select.value = current;
  renderAdmin();
}

async function loadHistory() {
  const data = await api("/api/history?limit=50");
  for (const job of data.jobs.reverse()) {
    jobCard(job);
    render(job);
    if (["queued", "running"].includes(job.status)) follow(job.id);
  }
  const last = $("#log").lastElementChild;
  if (last) last.scrollIntoView({ block: "end" });
}

function renderGallery() {
  const gallery = $("#gallery");
  const done = [...state.jobs.values()].map((e) => e.data).filter((j) => j.status === "done").sort((a, b) => b.id - a.id);
  const images = done.flatMap((job) => job.images.map((image) => ({ job, image })));
  $("#gallery-empty").hidden = images.length > 0;
  if (gallery.childElementCount === images.length) return;
  gallery.replaceChildren(...images.map(({ job, image }) => imageLink(job, image, "lazy")));
}

// One image of a job, opening the full-size PNG when clicked; `loading` before `src`, or it is too late.
function imageLink(job, image, loading = "eager") {
  const link = document.createElement("a");
  link.href = image.url;
  link.target = "_blank";
  const img = document.createElement("img");
  img.loading = loading;
  img.src = image.url;
  img.alt = `${job.request.prompt} (${t("ui_seed_label", { seed: image.seed })})`;
  sharpIfSmall(img, job.request.width);
  link.append(img);
  return link;
}

function renderAdmin() {
  const list = $("#admin-models");
  list.replaceChildren(...state.models.map((model) => {
    const item = document.createElement("li");
    const name = document.createElement("strong");
    name.textContent = model.name;
    const tags = document.createElement("span");
    tags.className = "tag" + (model.status === "broken" ? " broken" : "");
    tags.textContent = [model.kind, model.status, model.default ? t("ui_admin_default") : "",
                        model.loaded ? t("ui_admin_loaded") : "", model.error || ""].filter(Boolean).join(" · ");
    item.append(name, tags);
    if (!model.default && model.status === "ready") {
      item.append(button(t("ui_admin_set_default"), () => setDefault(model.name), "set-default"));
    }
    return item;
  }));
}

async function setDefault(name) {
  try {
    await api("/api/models/default", { method: "PUT", body: { name }, admin: true });
    await loadModels();
    $("#admin-message").textContent = "";
  } catch (error) {
    $("#admin-message").textContent = error.message;
  }
}

async function reloadModels() {
  try {
    const changes = await api("/api/models/reload", { method: "POST", admin: true });
    const list = (names) => names.join(", ") || t("ui_none");
    $("#admin-message").textContent = t("ui_admin_reloaded", {
      added: list(changes.added), changed: list(changes.changed), removed: list(changes.removed),
    });
    await loadModels();
  } catch (error) {
    $("#admin-message").textContent = error.message;
  }
}

function showTab(name) {
  for (const tab of ["chat", "gallery", "admin"]) {
    $(`#tab-${tab}`).setAttribute("aria-selected", String(tab === name));
    $(`#view-${tab}`).hidden = tab !== name;
  }
  if (name === "admin") loadModels().catch((error) => ($("#admin-message").textContent = error.message));
}

// --- start ----------------------------------------------------------------------------------------

async function main() {
  await loadTexts();
  $("#composer").addEventListener("submit", onSubmit);
  $("#prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("#composer").requestSubmit();
    }
  });
  for (const tab of ["chat", "gallery", "admin"]) $(`#tab-${tab}`).addEventListener("click", () => showTab(tab));
  $("#admin-token").value = state.adminToken;
  $("#admin-login").addEventListener("submit", (event) => {
    event.preventDefault();
    state.adminToken = $("#admin-token").value.trim();
    sessionStorage.setItem("imagebot.admin", state.adminToken);
    loadModels();
  });
  $("#admin-reload").addEventListener("click", reloadModels);
  try {
    await Promise.all([loadOptions(), loadModels()]);
    await loadHistory();
  } catch (error) {
    showError(error.message);
  }
  document.body.dataset.ready = "true";
}

main();

// Tiny images (the demo model draws 32 px) are shown enlarged with square pixels, not smeared.
function sharpIfSmall(img, width) {
  if (width < 256) img.classList.add("small");
}
