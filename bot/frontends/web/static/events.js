// One event stream for the whole page: GET /api/events tells every job of this user's (position,
// progress, results), whichever tab or page asked for it. It is read with fetch rather than
// EventSource so that it carries the client key like every other call; after a dropped connection
// it reconnects with the id of the last event it read (Last-Event-ID), and the server tells again
// the state of each job that is unfinished or finished meanwhile.

import { api, identity } from "./api.js";
import { FINISHED, job, updateJob } from "./store.js";

const FIRST_RETRY_MS = 1000;
const LONGEST_RETRY_MS = 30000;
const LOOK_UP_AFTER_MS = 1000; // a job heard of but not yet known (queued by another page) is read then

let lastId = "";
let retryMs = 3000; // what the server asks for between reconnections ("retry:")
const lookingUp = new Set();

const HANDLERS = {
  state: (data) => updateJob(data.id, data),
  queued: (data) => updateJob(data.job, { status: "queued", position: data.position, eta: data.eta }),
  position: (data) => updateJob(data.job, { status: "queued", position: data.position }),
  started: (data) => updateJob(data.job, { status: "running", progress: null }),
  progress: (data) => updateJob(data.job, {
    status: "running", progress: { step: data.step, total: data.total },
    ...(data.preview_url ? { preview: data.preview_url } : {}),
  }),
  done: (data) => updateJob(data.id, data),
  failed: (data) => updateJob(data.id, data),
  cancelled: (data) => updateJob(data.id, data),
};

export async function followJobs() {
  let wait = FIRST_RETRY_MS;
  for (;;) {
    try {
      const headers = { ...identity(), Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await fetch("/api/events", { headers, cache: "no-store" });
      if (response.ok && response.body) {
        wait = FIRST_RETRY_MS;
        await read(response.body);
      } else {
        wait = Math.min(wait * 2, LONGEST_RETRY_MS); // too many streams, banned, signed out: not so often
      }
    } catch {
      // the server is away (a restart): try again
    }
    await new Promise((resolve) => setTimeout(resolve, Math.max(wait, retryMs) * (0.75 + Math.random() / 2)));
  }
}

async function read(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      dispatch(block);
    }
  }
}

// One event of the stream (lines of "field: value"; a line starting with ":" is a keep-alive).
function dispatch(block) {
  const fields = { data: [] };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (name === "data") fields.data.push(value);
    else fields[name] = value;
  }
  if (fields.retry && /^\d+$/.test(fields.retry)) retryMs = Number(fields.retry);
  if (fields.id !== undefined) lastId = fields.id;
  const handle = HANDLERS[fields.event];
  if (!handle || !fields.data.length) return;
  let data;
  try {
    data = JSON.parse(fields.data.join("\n"));
  } catch {
    return;
  }
  handle(data);
  const id = data.job ?? data.id;
  if (!job(id)?.request && !lookingUp.has(id)) {
    lookingUp.add(id);
    setTimeout(() => lookUp(id).finally(() => lookingUp.delete(id)), LOOK_UP_AFTER_MS);
  }
}

// A job this page did not ask for (another page of the same user did): read it whole once.
async function lookUp(id) {
  if (job(id)?.request) return;
  try {
    const data = await api(`/api/jobs/${id}`);
    // what the stream said meanwhile is newer, unless this says the job has finished
    if (!job(id)?.request) updateJob(id, FINISHED.includes(data.status) ? data : { ...data, ...job(id), request: data.request });
  } catch {
    // gone: nothing to show
  }
}
