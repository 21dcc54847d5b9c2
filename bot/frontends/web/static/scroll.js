// Keeping the newest job in view: the page follows the end of the log (a new job, its progress,
// its images) unless the user has scrolled up to read; then a "Newest" button offers the way back.

import { $ } from "./dom.js";

const scroller = document.scrollingElement || document.documentElement;
let follow = true; // false while the user has scrolled up to read
let lastTop = 0; // the chat's last scroll position

function atBottom() {
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 48;
}

export function chatShown() {
  return !$("#view-chat").hidden;
}

export function scrollToNewest() {
  follow = true;
  if (chatShown()) scroller.scrollTop = scroller.scrollHeight;
  updateJump();
}

export function updateJump() {
  $("#jump").hidden = follow || !chatShown() || !$("#log").childElementCount || atBottom();
}

// Following stops only when the user moves up (growing content never scrolls the page up).
function onScroll() {
  if (!chatShown()) return;
  const top = scroller.scrollTop;
  if (atBottom()) follow = true;
  else if (top < lastTop) follow = false;
  lastTop = top;
  updateJump();
}

function onLayoutChange() {
  if (follow && chatShown()) scroller.scrollTop = scroller.scrollHeight;
  updateJump();
}

// The chat is shown again: where it was, or the newest job if it was following.
export function returnToChat() {
  if (follow) scrollToNewest();
  else scroller.scrollTop = lastTop;
}

// Another tab is shown: the chat's place is kept for the way back, the new tab starts at the top.
export function leaveChat() {
  lastTop = scroller.scrollTop;
  scroller.scrollTop = 0;
}

export function setupScrolling() {
  window.addEventListener("scroll", onScroll, { passive: true });
  const layout = new ResizeObserver(onLayoutChange);
  layout.observe($("#log"));
  layout.observe($("#composer"));
}
