// Jobs the page asks for: a new one's answer goes into the store (its card follows), derived jobs
// from a result's buttons, cancelling.

import { api } from "./api.js";
import { showError } from "./dom.js";
import { scrollToNewest } from "./scroll.js";
import { addJob } from "./store.js";
import { showTab } from "./tabs.js";

// The answer of a POST that queued a job (`action`: how it was derived from another, if it was, or
// "image" for one started from an attached picture; `note`: what its card says of it besides).
export function start(created, action = null, note = null) {
  showTab("chat");
  addJob({ id: created.id, status: "queued", position: created.position, eta: created.eta,
           request: created.request, images: [], grid: null, action, note });
  scrollToNewest();
}

export async function derive(id, action, index = 0) {
  showError("");
  try {
    start(await api(`/api/jobs/${id}/${action}`, { method: "POST", body: { index } }), action);
  } catch (error) {
    showTab("chat");
    showError(error.message);
  }
}

export async function cancel(id) {
  try {
    await api(`/api/jobs/${id}`, { method: "DELETE" });
  } catch (error) {
    showError(error.message);
  }
}
