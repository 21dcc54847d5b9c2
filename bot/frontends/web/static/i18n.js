// The page's texts: the server's message catalogue in the browser's language.

import { $$ } from "./dom.js";

let texts = {};

export function t(key, params = {}) {
  const template = texts[key] || key;
  return template.replace(/\{(\w+)\}/g, (_, name) => (name in params ? String(params[name]) : `{${name}}`));
}

export function language() {
  return navigator.language || "en";
}

export async function loadTexts() {
  const response = await fetch(`/api/messages?locale=${encodeURIComponent(language())}`);
  texts = await response.json();
  document.documentElement.lang = language().split("-")[0];
  for (const element of $$("[data-t]")) element.textContent = t(element.dataset.t);
  for (const element of $$("[data-t-placeholder]")) element.placeholder = t(element.dataset.tPlaceholder);
  for (const element of $$("[data-t-label]")) {
    element.setAttribute("aria-label", t(element.dataset.tLabel));
    element.title = t(element.dataset.tLabel);
  }
  document.title = t("ui_title");
}
