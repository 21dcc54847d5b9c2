// The page's shared state, owned here alone: read it with get() and job(), change it with set(),
// updateJob() and addJob(), and hear of changes with subscribe(). What only one module needs (a
// menu's focus, the lightbox's position, a brush stroke) stays private to that module.

export const FINISHED = ["done", "failed", "cancelled"];
export const ACTIVE = ["queued", "running"];

const state = {
  user: localStorage.getItem("imagebot.user") || newUserId(), // this browser's client key
  models: [],
  defaultModel: "",
  options: { limits: {}, schedulers: [], describe: true }, // GET /api/options: limits, schedulers, /describe
  admin: { enabled: true, unlocked: false },
  adminToken: sessionStorage.getItem("imagebot.admin") || "",
  adminProblem: "", // "wrong" | "empty" | "": what the last unlock attempt got wrong
  session: { auth: "none", user: null, admin: false }, // GET /api/session: accounts, and who is signed in
  remix: null, // {id, index}: the image the next prompt sent remixes
  tab: { name: "chat" }, // the tab shown (replaced each time one is shown)
};
localStorage.setItem("imagebot.user", state.user);

const jobs = new Map(); // job id -> the job as last heard (a frozen object, replaced on each change)
const listeners = new Set(); // {keys, fn}; the key "jobs" hears of every job change, with the job

function newUserId() {
  const bytes = new Uint8Array(16); // a 128-bit random key: no one can guess it or claim it
  crypto.getRandomValues(bytes);
  return "browser-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function get(key) {
  return state[key];
}

// Change some values; each listener of a changed key is called once, after all are changed.
export function set(changes) {
  const changed = Object.keys(changes).filter((key) => state[key] !== changes[key]);
  for (const key of changed) state[key] = changes[key];
  if (!changed.length) return;
  for (const listener of [...listeners]) {
    if (listener.keys.some((key) => changed.includes(key))) listener.fn(state);
  }
}

// Call fn when any of `keys` changes ("jobs": fn(job) for each job changed); returns the undo.
export function subscribe(keys, fn) {
  const listener = { keys: [].concat(keys), fn };
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function job(id) {
  return jobs.get(id);
}

export function allJobs() {
  return [...jobs.values()];
}

// What the server says of a job now (the event stream, in order): it overrides what was known,
// except that a finished job never goes back to waiting or running.
export function updateJob(id, changes) {
  const old = jobs.get(id);
  if (old && FINISHED.includes(old.status) && changes.status && !FINISHED.includes(changes.status)) return;
  store(id, { ...(old || {}), ...changes, id });
}

// A job as an answer to a request said it: the stream may already have told newer news of it,
// which stays; only what the stream does not say (the request, how it was asked for) is taken.
export function addJob(data) {
  const old = jobs.get(data.id);
  store(data.id, old ? { ...data, ...old, request: old.request || data.request, action: data.action ?? old.action }
    : { ...data });
}

function store(id, data) {
  const frozen = Object.freeze(data);
  jobs.set(id, frozen);
  for (const listener of [...listeners]) if (listener.keys.includes("jobs")) listener.fn(frozen);
}
