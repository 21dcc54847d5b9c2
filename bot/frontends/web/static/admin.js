// The Admin tab: it says what is locked and why; the models, bans and the audit log are offered
// once the token (or an admin account) works.

import { api } from "./api.js";
import { $, button } from "./dom.js";
import { t } from "./i18n.js";
import { loadModels } from "./models.js";
import { get, set, subscribe } from "./store.js";

const BANNABLE = /^(web|telegram|discord):[A-Za-z0-9_.:-]{1,64}$/; // as the API checks it

function renderAdmin() {
  const { enabled, unlocked } = get("admin");
  const session = get("session");
  const problem = get("adminProblem");
  const stateLine = $("#admin-state");
  let key = "ui_admin_locked";
  let look = "locked";
  const byAccount = session.admin; // an admin account needs no token
  if (!enabled) [key, look] = ["ui_admin_off", "off"];
  else if (byAccount) [key, look] = ["ui_admin_account", "unlocked"];
  else if (unlocked) [key, look] = ["ui_admin_unlocked", "unlocked"];
  else if (session.user && !problem) key = "ui_admin_account_locked";
  else if (problem === "wrong") [key, look] = ["ui_admin_wrong", "wrong"];
  else if (problem === "empty") [key, look] = ["ui_admin_token_empty", "wrong"];
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
  $("#admin-models").replaceChildren(...get("models").map((model) => {
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

// --- bans and the audit log ---------------------------------------------------------------------

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

// --- the token and the models ---------------------------------------------------------------------

async function unlock(event) {
  event.preventDefault();
  const token = $("#admin-token").value.trim();
  adminMessage("");
  if (!token) {
    set({ adminProblem: "empty" });
    renderAdmin();
    $("#admin-token").focus();
    return;
  }
  set({ adminProblem: "", adminToken: token });
  try {
    await loadModels(); // it says whether the token works
  } catch (error) {
    adminMessage(error.message);
    return;
  }
  if (!get("admin").unlocked) $("#admin-token").select();
}

function lock() {
  sessionStorage.removeItem("imagebot.admin");
  $("#admin-token").value = "";
  adminMessage("");
  set({ adminToken: "", adminProblem: "", admin: { ...get("admin"), unlocked: false } });
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

export function setupAdmin() {
  $("#admin-token").value = get("adminToken");
  $("#admin-login").addEventListener("submit", unlock);
  $("#admin-token").addEventListener("input", () => {
    if (get("adminProblem")) set({ adminProblem: "" });
  });
  $("#admin-lock").addEventListener("click", lock);
  $("#admin-reload").addEventListener("click", reloadModels);
  $("#admin-ban").addEventListener("submit", (event) => {
    event.preventDefault();
    banOrUnban("ban");
  });
  $("#unban-submit").addEventListener("click", () => banOrUnban("unban"));
  subscribe(["admin", "models", "adminProblem", "session"], renderAdmin);
  subscribe("tab", ({ tab }) => {
    if (tab.name === "admin") loadModels().catch((error) => adminMessage(error.message));
  });
}
