// The chat page: plain JavaScript over the HTTP API, no build step, no external assets.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];
const FINISHED = ["done", "failed", "cancelled"];
const ACTIVE = ["queued", "running"];
const FINE_POINTER = matchMedia("(pointer: fine)").matches; // not on phones: focusing the prompt opens the keyboard
const state = {
  user: localStorage.getItem("imagebot.user") || newUserId(),
  texts: {},
  jobs: new Map(), // id -> {data, card, source}
  models: [],
  defaultModel: "",
  admin: { enabled: true, unlocked: false },
  adminToken: sessionStorage.getItem("imagebot.admin") || "",
  adminProblem: "", // "wrong" | "empty" | "" : what the last unlock attempt got wrong
  session: { auth: "none", user: null, admin: false }, // GET /api/session: accounts, and who is signed in
  follow: true, // keep the newest job in view (false while the user has scrolled up to read)
  lastTop: 0, // the chat's last scroll position
  lightbox: null, // {items: [{job, index}], position, opener}
  remix: null, // {id, index}: the image the next prompt sent remixes
};
localStorage.setItem("imagebot.user", state.user);

function newUserId() {
  const bytes = new Uint8Array(16); // a 128-bit random key: no one can guess it or claim it
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
  for (const element of $$("[data-t]")) element.textContent = t(element.dataset.t);
  for (const element of $$("[data-t-placeholder]")) element.placeholder = t(element.dataset.tPlaceholder);
  for (const element of $$("[data-t-label]")) {
    element.setAttribute("aria-label", t(element.dataset.tLabel));
    element.title = t(element.dataset.tLabel);
  }
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

// --- keeping the newest job in view ----------------------------------------------------------------
// The page follows the end of the log (a new job, its progress, its images) unless the user has
// scrolled up to read; then a "Newest" button offers the way back.

const scroller = document.scrollingElement || document.documentElement;

function atBottom() {
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 48;
}

function chatShown() {
  return !$("#view-chat").hidden;
}

function scrollToNewest() {
  state.follow = true;
  if (chatShown()) scroller.scrollTop = scroller.scrollHeight;
  updateJump();
}

function updateJump() {
  $("#jump").hidden = state.follow || !chatShown() || !$("#log").childElementCount || atBottom();
}

// Following stops only when the user moves up (growing content never scrolls the page up).
function onScroll() {
  if (!chatShown()) return;
  const top = scroller.scrollTop;
  if (atBottom()) state.follow = true;
  else if (top < state.lastTop) state.follow = false;
  state.lastTop = top;
  updateJump();
}

function onLayoutChange() {
  if (state.follow && chatShown()) scroller.scrollTop = scroller.scrollHeight;
  updateJump();
}

// --- the chat log --------------------------------------------------------------------------------

function addToLog(item) {
  $("#log").append(item);
  updateWelcome();
}

function say(text) {
  const item = document.createElement("li");
  item.className = "job";
  const bubble = document.createElement("p");
  bubble.className = "bubble bot";
  bubble.textContent = text;
  item.append(bubble);
  addToLog(item);
  scrollToNewest();
}

function echo(text) {
  const item = document.createElement("li");
  item.className = "job";
  const bubble = document.createElement("p");
  bubble.className = "bubble user";
  bubble.textContent = text;
  item.append(bubble);
  addToLog(item);
  scrollToNewest();
}

function jobCard(job) {
  const entry = state.jobs.get(job.id);
  if (entry) return entry.card;
  const card = $("#job-template").content.firstElementChild.cloneNode(true);
  card.dataset.job = job.id;
  $(".bubble.user", card).textContent = describe(job.request, job.action);
  state.jobs.set(job.id, { data: job, card, source: null });
  addToLog(card);
  return card;
}

// What a derived job was asked for, as its card says it (a job from the history has no action: guessed).
const DERIVED_NOTE = { upscale: "upscale", vary_subtle: "subtle variation", vary_strong: "variation", remix: "remix" };

function describe(request, action) {
  let text = request.prompt;
  if (request.negative_prompt) text += ` --no ${request.negative_prompt}`;
  if (request.init_image && DERIVED_NOTE[action]) text += ` (${DERIVED_NOTE[action]})`;
  else if (request.init_image) text += request.count === 1 && request.strength < 0.5 ? " (upscale)" : " (variation)";
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
  if (!ACTIVE.includes(data.status)) $(".preview", card).hidden = true;
  renderImages(data, card);
  renderActions(data, card);
  renderGallery();
}

function renderImages(job, card) {
  const box = $(".images", card);
  if (job.status !== "done" || box.childElementCount) return;
  box.style.setProperty("--count", String(Math.min(job.images.length, 4)));
  box.classList.toggle("many", job.images.length > 1);
  job.images.forEach((image, index) => {
    const thumb = thumbnail(job, index, () => chatImages());
    thumb.dataset.index = String(index);
    box.append(thumb);
  });
}

// A button showing one image; it opens the lightbox on the list of images `list()` returns.
function thumbnail(job, index, list) {
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

function chatImages() {
  return $$("#log > li[data-job]").flatMap((card) => {
    const job = state.jobs.get(card.dataset.job)?.data;
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

function group(name) {
  const element = document.createElement("div");
  element.className = `group ${name}`;
  element.setAttribute("role", "group");
  return element;
}

function button(label, onClick, name, description) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = label;
  element.dataset.action = name;
  if (description) {
    element.setAttribute("aria-label", description);
    element.title = description;
  }
  element.addEventListener("click", onClick);
  return element;
}

function downloadLink(job, index, label) {
  const link = document.createElement("a");
  link.className = "button";
  link.href = job.images[index].url;
  link.download = `imagebot-${job.id}-${index + 1}.png`;
  link.textContent = label;
  link.dataset.action = "download";
  return link;
}

// --- the "more" menu of a job: downloads, seed, settings, parameters, grid -----------------------------

function moreMenu(job) {
  const wrapper = document.createElement("div");
  wrapper.className = "menu";
  const toggle = button("⋯", () => (list.hidden ? openMenu(wrapper) : closeMenu(wrapper)), "more", t("ui_more"));
  toggle.setAttribute("aria-haspopup", "menu");
  toggle.setAttribute("aria-expanded", "false");
  const list = document.createElement("div");
  list.className = "menu-list";
  list.setAttribute("role", "menu");
  list.hidden = true;
  const items = [];
  if (job.status === "done") {
    job.images.forEach((_, index) => items.push(downloadLink(job, index,
      job.images.length === 1 ? t("ui_download") : t("ui_download_image", { index: index + 1 }))));
    if (job.images.length) {
      const seed = job.images[0].seed;
      items.push(button(t("ui_copy_seed", { seed }), (event) => copy(String(seed), event.currentTarget), "copy-seed"));
    }
  }
  items.push(
    button(t("ui_reuse"), () => { closeMenu(wrapper); reuse(job.request); }, "reuse"),
    button(t("ui_copy_params"), (event) => copy(parametersText(job), event.currentTarget), "copy-params"),
  );
  if (job.status === "done" && job.grid) {
    const grid = document.createElement("a");
    grid.className = "button grid-link";
    grid.href = job.grid;
    grid.target = "_blank";
    grid.textContent = t("ui_grid");
    items.push(grid);
  }
  for (const item of items) {
    item.setAttribute("role", "menuitem");
    item.tabIndex = -1;
    if (item.dataset.action === "download") item.addEventListener("click", () => closeMenu(wrapper));
  }
  list.append(...items);
  list.addEventListener("keydown", (event) => menuKeys(event, wrapper));
  toggle.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      openMenu(wrapper, event.key === "ArrowUp" ? -1 : 0);
    }
  });
  wrapper.append(toggle, list);
  return wrapper;
}

function openMenu(wrapper, focusIndex = 0) {
  for (const other of $$(".menu")) if (other !== wrapper) closeMenu(other, false);
  const list = $(".menu-list", wrapper);
  list.hidden = false;
  $("[data-action=more]", wrapper).setAttribute("aria-expanded", "true");
  // open upwards when there is no room below (the prompt box is pinned to the bottom)
  const toggle = $("[data-action=more]", wrapper).getBoundingClientRect();
  const composer = $("#composer").getBoundingClientRect();
  const bottom = chatShown() ? Math.min(composer.top, innerHeight) : innerHeight;
  list.classList.toggle("up", toggle.bottom + list.offsetHeight + 8 > bottom && toggle.top - list.offsetHeight > 60);
  list.classList.toggle("start", toggle.right - list.offsetWidth < 8); // it opens leftwards unless that leaves the page
  const items = $$("[role=menuitem]", list);
  items.at(focusIndex)?.focus();
}

function closeMenu(wrapper, focusToggle = true) {
  const list = $(".menu-list", wrapper);
  if (!list || list.hidden) return;
  list.hidden = true;
  const toggle = $("[data-action=more]", wrapper);
  toggle.setAttribute("aria-expanded", "false");
  if (focusToggle && wrapper.contains(document.activeElement)) toggle.focus();
}

function menuKeys(event, wrapper) {
  const items = $$("[role=menuitem]", wrapper);
  const position = items.indexOf(document.activeElement);
  const move = { ArrowDown: 1, ArrowUp: -1 }[event.key];
  if (move) {
    event.preventDefault();
    items[(position + move + items.length) % items.length].focus();
  } else if (event.key === "Home" || event.key === "End") {
    event.preventDefault();
    items.at(event.key === "Home" ? 0 : -1).focus();
  } else if (event.key === "Escape") {
    event.preventDefault();
    event.stopPropagation();
    closeMenu(wrapper);
  } else if (event.key === "Tab") {
    closeMenu(wrapper, false);
  } else if (event.key === " " && document.activeElement?.tagName === "A") {
    event.preventDefault();
    document.activeElement.click();
  }
}

document.addEventListener("click", (event) => {
  for (const wrapper of $$(".menu")) if (!wrapper.contains(event.target)) closeMenu(wrapper, false);
});

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
    target.focus();
  }
  target.dataset.label ??= target.textContent; // the label before any "Copied"
  target.textContent = t("ui_copied");
  clearTimeout(target.copiedTimer);
  target.copiedTimer = setTimeout(() => (target.textContent = target.dataset.label), 1200);
}

// Remix: the prompt box gets the image's prompt (its LoRAs as tags) to edit; sending it varies the image.
function startRemix(job, index) {
  closeLightbox();
  showTab("chat");
  const request = job.request;
  const tags = (request.loras || [])
    .filter(([name]) => !request.prompt.toLowerCase().includes(`<lora:${name.toLowerCase()}`))
    .map(([name, weight]) => `<lora:${name}:${weight}>`);
  $("#prompt").value = [request.prompt, ...tags].join(" ");
  state.remix = { id: job.id, index };
  $("#remix-note").textContent = t("ui_remix_note", { index: index + 1 });
  $("#remix").hidden = false;
  $("#prompt").focus({ preventScroll: true });
}

function endRemix() {
  state.remix = null;
  $("#remix").hidden = true;
}

function reuse(request) {
  closeLightbox();
  showTab("chat");
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
  $("#fast").checked = Boolean(request.fast);
  updateModelInfo();
  openDrawer(false);
  $("#prompt").focus();
}

// --- the lightbox: one image large, its parameters and actions ------------------------------------

function openLightbox(items, position, opener) {
  if (!items.length) return;
  state.lightbox = { items, position, opener };
  showLightboxImage();
  const dialog = $("#lightbox");
  if (!dialog.open) dialog.showModal();
  $("#lb-close").focus();
}

function closeLightbox() {
  const dialog = $("#lightbox");
  if (dialog.open) dialog.close();
}

function onLightboxClosed() {
  const opener = state.lightbox?.opener;
  state.lightbox = null;
  $("#lb-image").removeAttribute("src");
  if (opener && opener.isConnected && !opener.closest("[hidden]")) opener.focus({ preventScroll: true });
}

function moveLightbox(step) {
  const box = state.lightbox;
  if (!box || box.items.length < 2) return;
  box.position = (box.position + step + box.items.length) % box.items.length;
  showLightboxImage();
}

function showLightboxImage() {
  const { items, position } = state.lightbox;
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
  $("#lb-actions").replaceChildren(
    downloadLink(job, index, t("ui_download")),
    button(t("ui_upscale"), run("upscale"), "upscale"),
    button(t("ui_vary_subtle"), run("vary_subtle"), "vary-subtle"),
    button(t("ui_vary_strong"), run("vary_strong"), "variation"),
    button(t("ui_remix"), () => startRemix(job, index), "remix"),
    button(t("ui_copy_seed", { seed: image.seed }), (event) => copy(String(image.seed), event.currentTarget),
           "copy-seed"),
    button(t("ui_reuse"), () => reuse(request), "reuse"),
    button(t("ui_vary_region"), () => varyRegion(job, index), "vary-region"),
  );
  const single = items.length < 2;
  $("#lb-prev").hidden = $("#lb-next").hidden = single;
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
  for (const name of FINISHED) {
    source.addEventListener(name, update((job) => {
      render(job);
      source.close();
      entry.source = null;
    }));
  }
  source.onerror = () => {
    // The browser reconnects by itself; a finished job's stream simply ends.
    if (FINISHED.includes(entry.data.status)) {
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
  if (message) $("#prompt").setAttribute("aria-invalid", "true");
  else $("#prompt").removeAttribute("aria-invalid");
}

async function submitPrompt(prompt) {
  if (state.remix) {  // Remix: a strong variation of the chosen image, drawn with the edited prompt
    const { id, index } = state.remix;
    start(await api(`/api/jobs/${id}/remix`, { method: "POST", body: { index, prompt } }), "remix");
    endRemix();
    return;
  }
  const body = { prompt };
  for (const name of ["negative_prompt", "model", "aspect", "size", "steps", "guidance", "seed", "count", "scheduler"]) {
    const value = $(`#composer [name="${name}"]`).value.trim();
    if (value !== "") body[name] = value;
  }
  if ($("#fast").checked) body.fast = true;
  Object.assign(body, await attachmentFields()); // an image prompt and its mask (images.js)
  const created = await api("/api/jobs", { method: "POST", body });
  attachmentSent();
  start(created);
}

function start(created, action = null) {
  const job = { id: created.id, status: "queued", position: created.position, eta: created.eta,
                request: created.request, images: [], grid: null, action };
  showTab("chat");
  jobCard(job);
  render(job);
  scrollToNewest();
  follow(job.id);
}

async function derive(id, action, index = 0) {
  showError("");
  try {
    start(await api(`/api/jobs/${id}/${action}`, { method: "POST", body: { index } }), action);
  } catch (error) {
    showTab("chat");
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
      if (!argument) throw new Error(promptNeeded());
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
      const waiting = [...state.jobs.values()].map((e) => e.data).filter((j) => ACTIVE.includes(j.status));
      if (!waiting.length) return say(t("ui_queue_empty"));
      return say(waiting.map((j) => t("ui_queue_item", {
        id: j.id, status: j.status, detail: j.status === "queued" ? `#${j.position ?? "?"}` : "",
      }).trim()).join("\n"));
    }
    default:
      throw new Error(t("ui_unknown_command", { command }));
  }
}

function promptNeeded() {
  const example = currentModel()?.examples?.[0];
  return example ? t("ui_prompt_needed", { example }) : t("ui_prompt_needed_plain");
}

async function onSubmit(event) {
  event.preventDefault();
  const input = $("#prompt");
  const text = input.value.trim();
  if (!text) {
    showError(promptNeeded());
    input.focus();
    return;
  }
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
    if (FINE_POINTER && !$("#lightbox").open) input.focus({ preventScroll: true });
  }
}

function runExample(prompt) {
  $("#prompt").value = prompt;
  $("#composer").requestSubmit();
}

// --- the welcome screen and the current model ----------------------------------------------------------

function currentModel() {
  const name = $("#model").value || state.defaultModel;
  return state.models.find((m) => m.name === name);
}

function updateWelcome() {
  const welcome = $("#welcome");
  welcome.hidden = $("#log").childElementCount > 0 || !document.body.dataset.ready;
}

// The welcome text, the examples, the prompt's placeholder and the settings' placeholders all
// follow the model the next prompt will use (the one picked in the settings, or the default).
function updateModelInfo() {
  const model = currentModel();
  const examples = model?.examples || [];
  $("#welcome-model").textContent = t("ui_welcome_model", { name: model?.name || state.defaultModel || "?" });
  $("#welcome-description").textContent = model?.description || "";
  $("#examples").replaceChildren(...examples.map((prompt) => {
    const item = document.createElement("li");
    item.append(button(prompt, () => runExample(prompt), "example"));
    return item;
  }));
  $("#welcome-examples-label").hidden = $("#examples").hidden = !examples.length;
  $("#prompt").placeholder = examples.length ? t("ui_placeholder_example", { example: examples[0] })
    : t("ui_placeholder_plain");
  const defaults = model?.defaults;
  if (!defaults) return;
  $("#negative").placeholder = defaults.negative_prompt || t("ui_none");
  $("#size").placeholder = `${defaults.width}x${defaults.height}`;
  $("#steps").placeholder = String(defaults.steps);
  $("#guidance").placeholder = String(defaults.guidance);
  $("#seed").placeholder = t("ui_seed_random");
  $("#count").placeholder = "1";
  const automatic = $("#scheduler").options[0];
  if (automatic) automatic.textContent = t("ui_model_default", { name: defaults.scheduler });
}

// --- the advanced settings drawer (a side panel; a bottom sheet on phones) ----------------------------

function openDrawer(focus = true) {
  $("#advanced").hidden = false;
  $("#advanced-toggle").setAttribute("aria-expanded", "true");
  document.body.classList.add("drawer-open");
  if (focus) $("#advanced-close").focus();
}

function closeDrawer() {
  const drawer = $("#advanced");
  if (drawer.hidden) return;
  const hadFocus = drawer.contains(document.activeElement);
  drawer.hidden = true;
  $("#advanced-toggle").setAttribute("aria-expanded", "false");
  document.body.classList.remove("drawer-open");
  if (hadFocus) $("#advanced-toggle").focus();
}

function clearSettings() {
  for (const field of $$("#advanced input, #advanced select")) field.value = "";
  updateModelInfo();
  showError("");
}

// --- models, options, history, gallery, admin ---------------------------------------------------------

async function loadOptions() {
  const options = await api("/api/options");
  const scheduler = $("#scheduler");
  const current = scheduler.value;
  scheduler.replaceChildren(new Option(t("ui_auto"), ""), ...options.schedulers.map((name) => new Option(name, name)));
  scheduler.value = current;
  $("#steps").max = options.limits.max_steps;
  $("#count").max = options.limits.max_images;
  $("#guidance").max = options.limits.max_guidance;
  updateModelInfo();
}

async function loadModels() {
  const data = await api("/api/models", { admin: true });
  state.models = data.models;
  state.defaultModel = data.default;
  state.admin = data.admin || { enabled: true, unlocked: Boolean(state.adminToken) };
  if (state.adminToken && !state.admin.unlocked) {
    // a wrong token (or one the server no longer has) is not kept
    state.adminToken = "";
    sessionStorage.removeItem("imagebot.admin");
    state.adminProblem = state.admin.enabled ? "wrong" : "";
  } else if (state.adminToken) {
    sessionStorage.setItem("imagebot.admin", state.adminToken);
  }
  const select = $("#model");
  const current = select.value;
  select.replaceChildren(new Option(t("ui_model_default", { name: data.default }), ""),
    ...data.models.filter((m) => m.status === "ready").map((m) => new Option(m.name, m.name)));
  select.value = current;
  updateModelInfo();
  renderAdmin();
}

async function loadHistory() {
  const data = await api("/api/history?limit=50");
  for (const job of data.jobs.reverse()) {
    jobCard(job);
    render(job);
    if (ACTIVE.includes(job.status)) follow(job.id);
  }
}

function renderGallery() {
  const gallery = $("#gallery");
  const done = [...state.jobs.values()].map((e) => e.data).filter((j) => j.status === "done")
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

// The admin tab says what is locked and why; actions are only offered once the token works.
function renderAdmin() {
  const { enabled, unlocked } = state.admin;
  const stateLine = $("#admin-state");
  let key = "ui_admin_locked";
  let look = "locked";
  const byAccount = state.session.admin; // an admin account needs no token
  if (!enabled) [key, look] = ["ui_admin_off", "off"];
  else if (byAccount) [key, look] = ["ui_admin_account", "unlocked"];
  else if (unlocked) [key, look] = ["ui_admin_unlocked", "unlocked"];
  else if (state.session.user && !state.adminProblem) key = "ui_admin_account_locked";
  else if (state.adminProblem === "wrong") [key, look] = ["ui_admin_wrong", "wrong"];
  else if (state.adminProblem === "empty") [key, look] = ["ui_admin_token_empty", "wrong"];
  stateLine.textContent = t(key);
  stateLine.dataset.state = look;
  $("#admin-token").disabled = !enabled;
  if (look === "wrong") $("#admin-token").setAttribute("aria-invalid", "true");
  else $("#admin-token").removeAttribute("aria-invalid");
  $("#admin-unlock").disabled = !enabled;
  $("#admin-unlock").hidden = unlocked;
  $("#admin-lock").hidden = !unlocked;
  $("#admin-login").hidden = byAccount;
  $("#admin-reload").disabled = !unlocked;
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
      const make = button(t("ui_admin_set_default"), () => setDefault(model.name), "set-default");
      make.disabled = !unlocked;
      if (!unlocked) make.title = t(key);
      item.append(make);
    }
    return item;
  }));
  if (!unlocked) $("#admin-reload").title = t(key);
  else $("#admin-reload").removeAttribute("title");
  $("#admin-users").hidden = !unlocked;
  if (unlocked) loadAudit().catch((error) => adminMessage(error.message));
}

// --- bans and the audit log (admins) ---------------------------------------------------------------

const BANNABLE = /^(web|telegram|discord):[A-Za-z0-9_.:-]{1,64}$/; // as the API checks it

function banMessage(text, wrong = false) {
  const line = $("#ban-message");
  line.textContent = text;
  line.dataset.state = wrong ? "wrong" : "unlocked";
  line.hidden = !text;
}

async function banOrUnban(action) {
  const user = $("#ban-user").value.trim();
  const reason = $("#ban-reason").value.trim();
  $("#ban-user").removeAttribute("aria-invalid");
  $("#ban-reason").removeAttribute("aria-invalid");
  if (!BANNABLE.test(user)) {
    $("#ban-user").setAttribute("aria-invalid", "true");
    banMessage(t("ui_admin_ban_user_format"), true);
    $("#ban-user").focus();
    return;
  }
  if (action === "ban" && !reason) {
    $("#ban-reason").setAttribute("aria-invalid", "true");
    banMessage(t("ui_admin_ban_reason_needed"), true);
    $("#ban-reason").focus();
    return;
  }
  try {
    const body = action === "ban" ? { user, reason } : { user };
    await api(`/api/admin/${action}`, { method: "POST", body, admin: true });
  } catch (error) {
    banMessage(error.message, true);
    return;
  }
  banMessage(t(action === "ban" ? "ui_admin_banned" : "ui_admin_unbanned", { user }));
  $("#ban-reason").value = "";
  await loadAudit().catch((error) => banMessage(error.message, true));
}

async function loadAudit() {
  const { entries } = await api("/api/audit?limit=20", { admin: true });
  $("#admin-audit-empty").hidden = entries.length > 0;
  $("#admin-audit").replaceChildren(...entries.map((entry) => {
    const item = document.createElement("li");
    const when = new Date(entry.at * 1000).toLocaleString();
    const detail = Object.entries(entry.detail || {}).map(([name, value]) => `${name}: ${value}`).join(", ");
    item.textContent = `${when} · ${entry.actor} · ${entry.action}${detail ? ` · ${detail}` : ""}`;
    return item;
  }));
}

function adminMessage(text) {
  $("#admin-message").textContent = text;
}

async function unlock(event) {
  event.preventDefault();
  const token = $("#admin-token").value.trim();
  state.adminProblem = "";
  adminMessage("");
  if (!token) {
    state.adminProblem = "empty";
    renderAdmin();
    $("#admin-token").focus();
    return;
  }
  state.adminToken = token;
  try {
    await loadModels(); // it says whether the token works
  } catch (error) {
    adminMessage(error.message);
    return;
  }
  if (!state.admin.unlocked) $("#admin-token").select();
}

function lock() {
  state.adminToken = "";
  state.adminProblem = "";
  sessionStorage.removeItem("imagebot.admin");
  $("#admin-token").value = "";
  adminMessage("");
  state.admin = { ...state.admin, unlocked: false };
  renderAdmin();
  $("#admin-token").focus();
}

async function setDefault(name) {
  try {
    await api("/api/models/default", { method: "PUT", body: { name }, admin: true });
    adminMessage("");
    await loadModels();
  } catch (error) {
    adminMessage(error.message);
  }
}

async function reloadModels() {
  try {
    const changes = await api("/api/models/reload", { method: "POST", admin: true });
    const list = (names) => names.join(", ") || t("ui_none");
    adminMessage(t("ui_admin_reloaded", {
      added: list(changes.added), changed: list(changes.changed), removed: list(changes.removed),
    }));
    await loadModels();
  } catch (error) {
    adminMessage(error.message);
  }
}

// --- accounts ([web] auth = "password") ----------------------------------------------------------------
// The session is an HttpOnly cookie the server sets: the page never sees it, it only asks who is
// signed in. Signing in or out reloads the page, which then starts as that user.

function showSignIn() {
  $(".tabs").hidden = true;
  for (const tab of TABS) $(`#view-${tab}`).hidden = true;
  $("#sign-in").hidden = false;
  $("#sign-in-form").addEventListener("submit", signIn);
  $("#sign-in-name").focus();
}

function showAccount() {
  $("#account").hidden = false;
  $("#account-name").textContent = t("ui_signed_in_as", { name: state.session.user });
  $("#sign-out").addEventListener("click", signOut);
}

async function signIn(event) {
  event.preventDefault();
  const name = $("#sign-in-name").value.trim();
  const password = $("#sign-in-password").value;
  const error = $("#sign-in-error");
  error.hidden = true;
  if (!name || !password) {
    error.textContent = t("ui_sign_in_empty");
    error.hidden = false;
    return;
  }
  try {
    await api("/api/session", { method: "POST", body: { name, password } });
  } catch (problem) {
    error.textContent = problem.message;
    error.hidden = false;
    $("#sign-in-password").select();
    return;
  }
  location.reload();
}

async function signOut() {
  try {
    await api("/api/session", { method: "DELETE" });
  } finally {
    location.reload();
  }
}

const TABS = ["chat", "gallery", "admin"];

function showTab(name) {
  const wasChat = chatShown();
  for (const tab of TABS) {
    const selected = tab === name;
    $(`#tab-${tab}`).setAttribute("aria-selected", String(selected));
    $(`#tab-${tab}`).tabIndex = selected ? 0 : -1;
    $(`#view-${tab}`).hidden = !selected;
  }
  document.body.dataset.tab = name;
  if (name !== "chat") closeDrawer();
  if (name === "chat" && !wasChat) {
    if (state.follow) scrollToNewest();
    else scroller.scrollTop = state.lastTop;
  } else if (name !== "chat" && wasChat) {
    state.lastTop = scroller.scrollTop;
    scroller.scrollTop = 0;
  }
  updateJump();
  if (name === "admin") loadModels().catch((error) => adminMessage(error.message));
}

function tabKeys(event) {
  const position = TABS.indexOf(event.target.id.replace("tab-", ""));
  const next = { ArrowRight: position + 1, ArrowLeft: position - 1, Home: 0, End: TABS.length - 1 }[event.key];
  if (next === undefined) return;
  event.preventDefault();
  const name = TABS[(next + TABS.length) % TABS.length];
  showTab(name);
  $(`#tab-${name}`).focus();
}

// --- start ----------------------------------------------------------------------------------------

async function main() {
  await loadTexts();
  $("#composer").addEventListener("submit", onSubmit);
  $("#remix-cancel").addEventListener("click", endRemix);
  $("#prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("#composer").requestSubmit();
    }
  });
  // an error goes away as soon as the user changes what it was about
  $("#composer").addEventListener("input", () => showError(""));
  $("#model").addEventListener("change", updateModelInfo);
  $("#advanced-toggle").addEventListener("click", () => ($("#advanced").hidden ? openDrawer() : closeDrawer()));
  $("#advanced-close").addEventListener("click", closeDrawer);
  $("#advanced-clear").addEventListener("click", clearSettings);
  $("#advanced").addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      closeDrawer();
    }
  });
  $("#jump").addEventListener("click", () => {
    scrollToNewest();
    if (FINE_POINTER) $("#prompt").focus({ preventScroll: true });
  });
  for (const tab of TABS) {
    $(`#tab-${tab}`).addEventListener("click", () => showTab(tab));
    $(`#tab-${tab}`).addEventListener("keydown", tabKeys);
  }
  $("#gallery-filter").addEventListener("input", filterGallery);
  $("#gallery-model").addEventListener("change", filterGallery);
  const lightbox = $("#lightbox");
  lightbox.addEventListener("close", onLightboxClosed);
  lightbox.addEventListener("keydown", (event) => {
    if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
      event.preventDefault();
      moveLightbox(event.key === "ArrowRight" ? 1 : -1);
    }
  });
  lightbox.addEventListener("click", (event) => { if (event.target === lightbox) closeLightbox(); }); // the backdrop
  $("#lb-close").addEventListener("click", closeLightbox);
  $("#lb-prev").addEventListener("click", () => moveLightbox(-1));
  $("#lb-next").addEventListener("click", () => moveLightbox(1));
  $("#admin-token").value = state.adminToken;
  $("#admin-login").addEventListener("submit", unlock);
  $("#admin-token").addEventListener("input", () => {
    if (state.adminProblem) {
      state.adminProblem = "";
      renderAdmin();
    }
  });
  $("#admin-lock").addEventListener("click", lock);
  $("#admin-reload").addEventListener("click", reloadModels);
  $("#admin-ban").addEventListener("submit", (event) => {
    event.preventDefault();
    banOrUnban("ban");
  });
  $("#unban-submit").addEventListener("click", () => banOrUnban("unban"));
  try {
    state.session = await api("/api/session");
  } catch (error) {
    showError(error.message);
  }
  if (state.session.auth === "password" && !state.session.user) {
    showSignIn();
    document.body.dataset.ready = "true";
    return;
  }
  if (state.session.user) showAccount();
  window.addEventListener("scroll", onScroll, { passive: true });
  const layout = new ResizeObserver(onLayoutChange);
  layout.observe($("#log"));
  layout.observe($("#composer"));
  try {
    await Promise.all([loadOptions(), loadModels()]);
    await loadHistory();
  } catch (error) {
    showError(error.message);
  }
  document.body.dataset.ready = "true";
  updateWelcome();
  scrollToNewest();
  if (FINE_POINTER) $("#prompt").focus({ preventScroll: true });
}

main();

// Tiny images (the demo model draws 32 px) are shown enlarged with square pixels, not smeared.
function sharpIfSmall(img, width) {
  if (width < 256) img.classList.add("small");
}
