// The advanced settings drawer (a side panel; a bottom sheet on phones). It closes when another tab
// is shown.

import { $, $$, showError } from "./dom.js";
import { snapSize, updateModelInfo } from "./models.js";
import { subscribe } from "./store.js";

export function openDrawer(focus = true) {
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

export function setupDrawer() {
  $("#model").addEventListener("change", updateModelInfo);
  $("#size").addEventListener("change", snapSize);
  $("#advanced-toggle").addEventListener("click", () => ($("#advanced").hidden ? openDrawer() : closeDrawer()));
  $("#advanced-close").addEventListener("click", closeDrawer);
  $("#advanced-clear").addEventListener("click", clearSettings);
  $("#advanced").addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      closeDrawer();
    }
  });
  subscribe("tab", ({ tab }) => {
    if (tab.name !== "chat") closeDrawer();
  });
}
