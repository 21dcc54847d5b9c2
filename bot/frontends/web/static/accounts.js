// Accounts ([web] auth = "password"). The session is an HttpOnly cookie the server sets: the page
// never sees it, it only asks who is signed in. Signing in or out reloads the page, which then
// starts as that user.

import { api } from "./api.js";
import { $ } from "./dom.js";
import { t } from "./i18n.js";
import { get } from "./store.js";
import { TABS } from "./tabs.js";

export function showSignIn() {
  $(".tabs").hidden = true;
  for (const tab of TABS) $(`#view-${tab}`).hidden = true;
  $("#sign-in").hidden = false;
  $("#sign-in-form").addEventListener("submit", signIn);
  $("#sign-in-name").focus();
}

export function showAccount() {
  $("#account").hidden = false;
  $("#account-name").textContent = t("ui_signed_in_as", { name: get("session").user });
  $("#sign-out").addEventListener("click", signOut);
}

async function signIn(event) {
  event.preventDefault();
  const name = $("#sign-in-name").value.trim();
  const password = $("#sign-in-password").value;
  const error = $("#sign-in-error");
  error.hidden = true;
  if (!name || !password) {
    error.textContent = t("ui_sign_in_empty");
    error.hidden = false;
    return;
  }
  try {
    await api("/api/session", { method: "POST", body: { name, password } });
  } catch (problem) {
    error.textContent = problem.message;
    error.hidden = false;
    $("#sign-in-password").select();
    return;
  }
  location.reload();
}

async function signOut() {
  try {
    await api("/api/session", { method: "DELETE" });
  } finally {
    location.reload();
  }
}
