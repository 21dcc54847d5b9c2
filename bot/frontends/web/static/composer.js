// The prompt box: sending a prompt (with the drawer's settings and an attached image) or a command,
// Remix, and "Use these settings".

import { start } from "./actions.js";
import { api } from "./api.js";
import { $, FINE_POINTER, showError } from "./dom.js";
import { openDrawer } from "./drawer.js";
import { t } from "./i18n.js";
import { echo, say } from "./log.js";
import { currentModel, helpText, loadModels, updateModelInfo } from "./models.js";
import { ACTIVE, allJobs, get, set } from "./store.js";
import { showTab } from "./tabs.js";
import { attachedSize, attachmentFields, removeAttachment } from "./uploads.js";

const SETTINGS = ["negative_prompt", "model", "aspect", "size", "steps", "guidance", "seed", "count", "scheduler"];

async function submitPrompt(prompt) {
  const remix = get("remix");
  if (remix) {  // Remix: a strong variation of the chosen image, drawn with the edited prompt
    start(await api(`/api/jobs/${remix.id}/remix`, { method: "POST", body: { index: remix.index, prompt } }), "remix");
    endRemix();
    return;
  }
  const body = { prompt };
  for (const name of SETTINGS) {
    const field = $(`#composer [name="${name}"]`);
    const value = field.value.trim();
    if (value !== "" && !field.disabled) body[name] = value;  // disabled: the model's family has no such thing
  }
  if ($("#fast").checked) body.fast = true;
  const size = attachedSize();
  const fields = await attachmentFields(); // an image prompt and its mask
  Object.assign(body, fields);
  const created = await api("/api/jobs", { method: "POST", body });
  removeAttachment();
  // A picture whose shape the model cannot draw exactly is drawn at the model's nearest size: say so.
  const { width, height } = created.request;
  const resized = size && (size.width !== width || size.height !== height);
  start(created, fields.image ? "image" : null, resized ? t("ui_size_note", { width, height }) : null);
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
      return say(helpText());
    case "/model":
    case "/models": {
      echo(text);
      await loadModels();
      const names = get("models").filter((m) => m.status === "ready").map((m) => m.name);
      say(t("ui_models_list", { default: get("defaultModel"), models: names.join(", ") || t("ui_none") }));
      if (argument && get("adminToken")) {
        await api("/api/models/default", { method: "PUT", body: { name: argument }, admin: true });
        await loadModels();
        return say(t("ui_model_set", { name: argument }));
      }
      if (argument) say(t("ui_model_admin_hint"));
      return;
    }
    case "/queue": {
      echo(text);
      const waiting = allJobs().filter((j) => j.request && ACTIVE.includes(j.status));
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

// Remix: the prompt box gets the image's prompt (its LoRAs as tags) to edit; sending it varies the image.
export function startRemix(job, index) {
  showTab("chat");
  const request = job.request;
  const tags = (request.loras || [])
    .filter(([name]) => !request.prompt.toLowerCase().includes(`<lora:${name.toLowerCase()}`))
    .map(([name, weight]) => `<lora:${name}:${weight}>`);
  $("#prompt").value = [request.prompt, ...tags].join(" ");
  set({ remix: { id: job.id, index } });
  $("#remix-note").textContent = t("ui_remix_note", { index: index + 1 });
  $("#remix").hidden = false;
  $("#prompt").focus({ preventScroll: true });
}

function endRemix() {
  set({ remix: null });
  $("#remix").hidden = true;
}

// "Use these settings": a job's request back in the prompt box and the drawer.
export function reuse(request) {
  showTab("chat");
  $("#prompt").value = request.prompt;
  $("#model").value = request.model;
  updateModelInfo();  // first: the model's family decides which fields and schedulers there are
  const fill = (selector, value) => { if (!$(selector).disabled) $(selector).value = value; };
  fill("#negative", request.negative_prompt || "");
  $("#size").value = `${request.width}x${request.height}`;
  $("#aspect").value = "";
  $("#steps").value = request.steps;
  fill("#guidance", request.guidance);
  $("#seed").value = request.seed;
  $("#count").value = request.count;
  $("#scheduler").value = request.scheduler;
  $("#fast").checked = Boolean(request.fast);
  openDrawer(false);
  $("#prompt").focus();
}

export function setupComposer() {
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
}
