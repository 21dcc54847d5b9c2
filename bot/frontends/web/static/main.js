// The chat page: plain JavaScript modules over the HTTP API, no build step, no external assets.
// This module wires the parts together and starts the page; the state they share lives in store.js.

import { setupAdmin } from "./admin.js";
import { showAccount, showSignIn } from "./accounts.js";
import { api } from "./api.js";
import { setupChat } from "./chat.js";
import { setupComposer } from "./composer.js";
import { $, FINE_POINTER, showError } from "./dom.js";
import { setupDrawer } from "./drawer.js";
import { followJobs } from "./events.js";
import { setupGallery } from "./gallery.js";
import { loadTexts } from "./i18n.js";
import { setupLightbox } from "./lightbox.js";
import { updateWelcome } from "./log.js";
import { setupMenus } from "./menu.js";
import { loadModels, loadOptions } from "./models.js";
import { scrollToNewest, setupScrolling } from "./scroll.js";
import { addJob, get, set } from "./store.js";
import { setupTabs } from "./tabs.js";
import { setupImagePrompts } from "./uploads.js";

async function loadHistory() {
  const data = await api("/api/history?limit=50");
  for (const job of data.jobs.reverse()) addJob(job);
}

async function main() {
  await loadTexts();
  setupChat();
  setupComposer();
  setupDrawer();
  setupMenus();
  setupLightbox();
  setupTabs();
  setupGallery();
  setupAdmin();
  setupImagePrompts();
  $("#jump").addEventListener("click", () => {
    scrollToNewest();
    if (FINE_POINTER) $("#prompt").focus({ preventScroll: true });
  });
  try {
    set({ session: await api("/api/session") });
  } catch (error) {
    showError(error.message);
  }
  const session = get("session");
  if (session.auth === "password" && !session.user) {
    showSignIn();
    document.body.dataset.ready = "true";
    return;
  }
  if (session.user) showAccount();
  setupScrolling();
  try {
    await Promise.all([loadOptions(), loadModels()]);
    await loadHistory();
  } catch (error) {
    showError(error.message);
  }
  followJobs(); // runs for as long as the page is open
  document.body.dataset.ready = "true";
  updateWelcome();
  scrollToNewest();
  if (FINE_POINTER) $("#prompt").focus({ preventScroll: true });
}

main();
