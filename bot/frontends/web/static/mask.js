// The mask editor of "Vary region": paint over the attached picture what is to be redrawn (white
// in the mask), erase, clear; the mask has the picture's own pixels.

import { $ } from "./dom.js";

const brush = { painting: false, erasing: false, last: null }; // last: the stroke's previous point, in mask pixels

export function showMaskEditor(shown) {
  $("#mask-canvas").hidden = !shown;
  $("#mask-tools").hidden = !shown;
  $("#vary-region").setAttribute("aria-pressed", String(shown));
  $("#mask-note").hidden = !shown;
}

export function maskShown() {
  return !$("#mask-canvas").hidden;
}

export function sizeMask(width, height) {
  const canvas = $("#mask-canvas");
  canvas.width = width;
  canvas.height = height;
  canvas.style.setProperty("--ratio", String(width / height));
}

function maskContext() {
  return $("#mask-canvas").getContext("2d", { willReadFrequently: true });
}

export function clearMask() {
  const canvas = $("#mask-canvas");
  maskContext().clearRect(0, 0, canvas.width, canvas.height);
}

function maskPoint(event) {
  const canvas = $("#mask-canvas");
  const box = canvas.getBoundingClientRect();
  return { x: (event.clientX - box.left) * canvas.width / box.width,
           y: (event.clientY - box.top) * canvas.height / box.height };
}

function paint(to) {
  const canvas = $("#mask-canvas");
  const context = maskContext();
  const from = brush.last || to;
  context.globalCompositeOperation = brush.erasing ? "destination-out" : "source-over";
  context.strokeStyle = context.fillStyle = "#ffffff";
  context.lineCap = "round";
  context.lineWidth = Math.max(2, Math.max(canvas.width, canvas.height) / 8);
  context.beginPath();
  context.moveTo(from.x, from.y);
  context.lineTo(to.x, to.y);
  context.stroke();
  brush.last = to;
}

function startStroke(event) {
  event.preventDefault();
  $("#mask-canvas").setPointerCapture(event.pointerId);
  brush.painting = true;
  brush.last = null;
  paint(maskPoint(event));
}

function moveStroke(event) {
  if (brush.painting) paint(maskPoint(event));
}

function endStroke() {
  brush.painting = false;
  brush.last = null;
}

export function maskIsEmpty() {
  const canvas = $("#mask-canvas");
  const pixels = maskContext().getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) return false;
  return true;
}

// What was painted becomes white, the rest black: the mask the API takes.
export function maskBlob() {
  const canvas = $("#mask-canvas");
  const painted = maskContext().getImageData(0, 0, canvas.width, canvas.height);
  const pixels = painted.data;
  for (let i = 0; i < pixels.length; i += 4) {
    const value = pixels[i + 3] > 0 ? 255 : 0;
    pixels[i] = pixels[i + 1] = pixels[i + 2] = value;
    pixels[i + 3] = 255;
  }
  const out = document.createElement("canvas");
  out.width = canvas.width;
  out.height = canvas.height;
  out.getContext("2d").putImageData(painted, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

export function setupMask() {
  $("#vary-region").addEventListener("click", () => {
    const shown = !maskShown();
    showMaskEditor(shown);
    if (!shown) clearMask();
  });
  const tool = (erasing) => () => {
    brush.erasing = erasing;
    $("#mask-brush").setAttribute("aria-pressed", String(!erasing));
    $("#mask-eraser").setAttribute("aria-pressed", String(erasing));
  };
  $("#mask-brush").addEventListener("click", tool(false));
  $("#mask-eraser").addEventListener("click", tool(true));
  $("#mask-clear").addEventListener("click", clearMask);
  const canvas = $("#mask-canvas");
  canvas.addEventListener("pointerdown", startStroke);
  canvas.addEventListener("pointermove", moveStroke);
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);
}
