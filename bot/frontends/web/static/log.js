// The chat log: what the user said and what the bot answered, above the prompt box.

import { $ } from "./dom.js";
import { scrollToNewest } from "./scroll.js";

export function addToLog(item) {
  $("#log").append(item);
  updateWelcome();
}

function bubble(text, who) {
  const item = document.createElement("li");
  item.className = "job";
  const line = document.createElement("p");
  line.className = `bubble ${who}`;
  line.textContent = text;
  item.append(line);
  addToLog(item);
  scrollToNewest();
}

export function say(text) {
  bubble(text, "bot");
}

export function echo(text) {
  bubble(text, "user");
}

// The welcome screen shows while the log is empty (once the page has loaded).
export function updateWelcome() {
  $("#welcome").hidden = $("#log").childElementCount > 0 || !document.body.dataset.ready;
}
