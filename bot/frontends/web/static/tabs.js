// The tabs (chat, gallery, admin). The tab shown is in the store: the drawer closes and the admin
// tab loads what it shows by subscribing to it.

import { $ } from "./dom.js";
import { chatShown, leaveChat, returnToChat, updateJump } from "./scroll.js";
import { get, set, subscribe } from "./store.js";

export const TABS = ["chat", "gallery", "admin"];

export function showTab(name) {
  const wasChat = chatShown();
  for (const tab of TABS) {
    const selected = tab === name;
    $(`#tab-${tab}`).setAttribute("aria-selected", String(selected));
    $(`#tab-${tab}`).tabIndex = selected ? 0 : -1;
    $(`#view-${tab}`).hidden = !selected;
  }
  document.body.dataset.tab = name;
  set({ tab: { name } }); // a new value each time: showing the admin tab again reloads it
  if (name === "chat" && !wasChat) returnToChat();
  else if (name !== "chat" && wasChat) leaveChat();
  updateJump();
}

// The Admin tab is there for admins only: an admin account, or a browser that entered a working
// admin token. Without accounts the token is entered from "Admin sign-in" at the foot of Advanced
// settings (offered when the server has an admin token at all); the tab stays while it is shown.
function isAdmin() {
  return Boolean(get("session").admin || get("admin").unlocked);
}

function updateAdminTab() {
  const { enabled } = get("admin");
  const shown = isAdmin() || get("tab").name === "admin";
  $("#tab-admin").hidden = !shown;
  $("#admin-entry").hidden = shown || !enabled || get("session").auth === "password";
}

function tabKeys(event) {
  const tabs = TABS.filter((tab) => !$(`#tab-${tab}`).hidden);
  const position = tabs.indexOf(event.target.id.replace("tab-", ""));
  const next = { ArrowRight: position + 1, ArrowLeft: position - 1, Home: 0, End: tabs.length - 1 }[event.key];
  if (next === undefined) return;
  event.preventDefault();
  const name = tabs[(next + tabs.length) % tabs.length];
  showTab(name);
  $(`#tab-${name}`).focus();
}

export function setupTabs() {
  subscribe(["admin", "session", "tab"], updateAdminTab);
  $("#admin-entry").addEventListener("click", () => {
    showTab("admin");
    $("#admin-token").focus();
  });
  updateAdminTab();
  for (const tab of TABS) {
    $(`#tab-${tab}`).addEventListener("click", () => showTab(tab));
    $(`#tab-${tab}`).addEventListener("keydown", tabKeys);
  }
}
