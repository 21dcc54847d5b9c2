// The tabs (chat, gallery, admin). The tab shown is in the store: the drawer closes and the admin
// tab loads what it shows by subscribing to it.

import { $ } from "./dom.js";
import { chatShown, leaveChat, returnToChat, updateJump } from "./scroll.js";
import { set } from "./store.js";

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

function tabKeys(event) {
  const position = TABS.indexOf(event.target.id.replace("tab-", ""));
  const next = { ArrowRight: position + 1, ArrowLeft: position - 1, Home: 0, End: TABS.length - 1 }[event.key];
  if (next === undefined) return;
  event.preventDefault();
  const name = TABS[(next + TABS.length) % TABS.length];
  showTab(name);
  $(`#tab-${name}`).focus();
}

export function setupTabs() {
  for (const tab of TABS) {
    $(`#tab-${tab}`).addEventListener("click", () => showTab(tab));
    $(`#tab-${tab}`).addEventListener("keydown", tabKeys);
  }
}
