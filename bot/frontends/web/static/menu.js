// The "more" menu of a job (downloads, seed, settings, parameters, grid), and copying text.

import { reuse } from "./composer.js";
import { $, $$, button } from "./dom.js";
import { t } from "./i18n.js";
import { chatShown } from "./scroll.js";

export function downloadLink(job, index, label) {
  const link = document.createElement("a");
  link.className = "button";
  link.href = job.images[index].url;
  link.download = `imagebot-${job.id}-${index + 1}.png`;
  link.textContent = label;
  link.dataset.action = "download";
  return link;
}

export function moreMenu(job) {
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

// A click anywhere else closes an open menu.
export function setupMenus() {
  document.addEventListener("click", (event) => {
    for (const wrapper of $$(".menu")) if (!wrapper.contains(event.target)) closeMenu(wrapper, false);
  });
}

function parametersText(job) {
  const r = job.request;
  const seed = job.images.length ? job.images[0].seed : r.seed;
  let text = r.prompt;
  if (r.negative_prompt) text += `\nNegative prompt: ${r.negative_prompt}`;
  return `${text}\nSteps: ${r.steps}, Sampler: ${r.scheduler}, CFG scale: ${r.guidance}, Seed: ${seed}, ` +
    `Size: ${r.width}x${r.height}, Model: ${r.model}`;
}

export async function copy(text, target) {
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
