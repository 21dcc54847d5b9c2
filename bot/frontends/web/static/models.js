// The models and options the server offers, and what follows the model the next prompt will use:
// the welcome text, the examples and the placeholders of the prompt box and the drawer.

import { api } from "./api.js";
import { $, button, runPrompt } from "./dom.js";
import { t } from "./i18n.js";
import { get, set } from "./store.js";

export async function loadOptions() {
  const options = await api("/api/options");
  $("#steps").max = options.limits.max_steps;
  $("#count").max = options.limits.max_images;
  $("#guidance").max = options.limits.max_guidance;
  set({ options });
  updateModelInfo();
}

// The models, and whether the admin token (if any) works: a wrong one (or one the server no
// longer has) is not kept.
export async function loadModels() {
  const data = await api("/api/models", { admin: true });
  const token = get("adminToken");
  const admin = data.admin || { enabled: true, unlocked: Boolean(token) };
  const changes = { models: data.models, defaultModel: data.default, admin };
  if (token && !admin.unlocked) {
    sessionStorage.removeItem("imagebot.admin");
    Object.assign(changes, { adminToken: "", adminProblem: admin.enabled ? "wrong" : "" });
  } else if (token) {
    sessionStorage.setItem("imagebot.admin", token);
  }
  const select = $("#model");
  const current = select.value;
  select.replaceChildren(new Option(t("ui_model_default", { name: data.default }), ""),
    ...data.models.filter((m) => m.status === "ready").map((m) => new Option(m.name, m.name)));
  select.value = current;
  set(changes);
  updateModelInfo();
}

export function currentModel() {
  const name = $("#model").value || get("defaultModel");
  return get("models").find((m) => m.name === name);
}

// /help: the inline flags, each with a value the model the next prompt uses accepts (its own size,
// steps and guidance; a refiner or a fast mode only where it has one).
export function helpText() {
  const model = currentModel();
  const defaults = model?.defaults || { width: 512, height: 512, steps: 25, guidance: 7 };
  const family = model?.family;
  const limits = get("options").limits || {};
  const schedulers = offeredSchedulers(family);
  const options = ["--ar 3:2", `--size ${defaults.width}x${defaults.height}`, "--seed 42"];
  if (family?.negative_prompt !== false) options.push(t("ui_help_no"));
  options.push(`--steps ${defaults.steps}`);
  if (family?.guidance !== false) options.push(`--cfg ${defaults.guidance}`);
  const most = Math.min(4, limits.max_images ?? 4);
  if (most > 1) options.push(`--n ${most}`);
  options.push("--model NAME");
  const scheduler = schedulers.includes("euler_a") ? "euler_a" : schedulers[0];
  if (scheduler) options.push(`--scheduler ${scheduler}`);
  if (defaults.refiner) options.push(`--refiner ${defaults.refiner_switch} ${t("ui_help_refiner")}`);
  if (defaults.fast_steps) options.push(`--fast ${t("ui_help_fast")}`);
  return t("ui_help", { model: model?.name || get("defaultModel") || "?", options: options.join(", ") });
}

export function updateModelInfo() {
  const model = currentModel();
  const examples = model?.examples || [];
  $("#welcome-model").textContent = t("ui_welcome_model", { name: model?.name || get("defaultModel") || "?" });
  $("#welcome-description").textContent = model?.description || "";
  $("#examples").replaceChildren(...examples.map((prompt) => {
    const item = document.createElement("li");
    item.append(button(prompt, () => runPrompt(prompt), "example"));
    return item;
  }));
  $("#welcome-examples-label").hidden = $("#examples").hidden = !examples.length;
  $("#prompt").placeholder = examples.length ? t("ui_placeholder_example", { example: examples[0] })
    : t("ui_placeholder_plain");
  const defaults = model?.defaults;
  showFamily(model?.family);
  // Fast mode is offered only for a model that has one (a variant with fast_steps).
  $("#fast-field").hidden = !defaults?.fast_steps;
  if (!defaults?.fast_steps) $("#fast").checked = false;
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

// The schedulers the server runs that the model's family can draw with (all of them for a model
// the page knows nothing of yet).
function offeredSchedulers(family) {
  const all = get("options")?.schedulers || [];
  return family ? all.filter((name) => family.schedulers.includes(name)) : all;
}

// What the model's family cannot take is greyed out, with a note why; the server decides what a
// family can do (/api/models' "family"), the page only shows it.
function showFamily(family) {
  const scheduler = $("#scheduler");
  const chosen = scheduler.value;
  const names = offeredSchedulers(family);
  scheduler.replaceChildren(new Option(t("ui_auto"), ""), ...names.map((name) => new Option(name, name)));
  scheduler.value = names.includes(chosen) ? chosen : "";
  setAvailable("#negative", "#negative-note", family?.negative_prompt !== false,
               t("ui_negative_unavailable", { family: family?.label }));
  setAvailable("#guidance", "#guidance-note", family?.guidance !== false,
               t("ui_guidance_unavailable", { family: family?.label }));
  const step = family?.size_step || 8;
  $("#size").dataset.step = String(step);
  $("#size").title = t("ui_size_step", { step });
  snapSize();
}

function setAvailable(field, note, available, why) {
  const input = $(field);
  input.disabled = !available;
  if (!available) input.value = "";
  $(note).textContent = available ? "" : why;
  $(note).hidden = available;
}

// A typed size goes onto the family's grid (multiples of 8 or 16 px), as the server would put it.
export function snapSize() {
  const input = $("#size");
  const found = /^\s*(\d+)\s*[xX]\s*(\d+)\s*$/.exec(input.value);
  if (!found) return;
  const step = Number(input.dataset.step) || 8;
  const snap = (side) => Math.max(step, Math.round(Number(side) / step) * step);
  input.value = `${snap(found[1])}x${snap(found[2])}`;
}
