// Calls to the HTTP API as this browser's client key (X-Imagebot-User), in its language; errors
// become Errors with the server's message.

import { language, t } from "./i18n.js";
import { get } from "./store.js";

export function identity() {
  return { "X-Imagebot-User": get("user"), "Accept-Language": language() };
}

export async function api(path, { method = "GET", body, admin = false } = {}) {
  const headers = identity();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (admin && get("adminToken")) headers["Authorization"] = `Bearer ${get("adminToken")}`;
  return answer(() => fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) }));
}

// An image prompt or a mask, as the body of POST /api/uploads.
export async function upload(blob, kind = "image") {
  const headers = { ...identity(), "Content-Type": blob.type || "image/png" };
  return answer(() => fetch(`/api/uploads${kind === "mask" ? "?kind=mask" : ""}`, { method: "POST", headers, body: blob }));
}

async function answer(call) {
  let response;
  try {
    response = await call();
  } catch {
    throw new Error(t("ui_network_error"));
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}
