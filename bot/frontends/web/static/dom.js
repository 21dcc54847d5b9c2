// Small DOM helpers every part of the page uses.

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];
export const FINE_POINTER = matchMedia("(pointer: fine)").matches; // not on phones: focusing the prompt opens the keyboard

export function button(label, onClick, name, description) {
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

export function group(name) {
  const element = document.createElement("div");
  element.className = `group ${name}`;
  element.setAttribute("role", "group");
  return element;
}

// Tiny images (the demo model draws 32 px) are shown enlarged with square pixels, not smeared.
export function sharpIfSmall(img, width) {
  if (width < 256) img.classList.add("small");
}

// The line above the prompt box that says what went wrong ("" hides it).
export function showError(message) {
  const box = $("#form-error");
  box.textContent = message;
  box.hidden = !message;
  if (message) $("#prompt").setAttribute("aria-invalid", "true");
  else $("#prompt").removeAttribute("aria-invalid");
}

// Send `text` as if typed in the prompt box (an example, a described prompt).
export function runPrompt(text) {
  $("#prompt").value = text;
  $("#composer").requestSubmit();
}
