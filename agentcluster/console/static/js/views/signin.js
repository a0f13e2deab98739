// Sign in with an API key: a tenant's key (sessions and chat) or the admin key (providers and
// the cluster). The key stays in this tab's sessionStorage only.

import { h, replace } from "../dom.js";

export function mount(ctx, el) {
  const input = h("input", {
    id: "api-key",
    name: "api-key",
    type: "password",
    autocomplete: "current-password",
    spellcheck: "false",
    required: true,
    placeholder: "ac_…",
  });
  const error = h("p", { class: "error", role: "alert", hidden: true });
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h(
    "form",
    { class: "card narrow", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in"),
    // For password managers and accessibility: a password form names its user.
    h("input", { type: "text", name: "username", autocomplete: "username", value: "api key", hidden: true }),
    h("label", { for: "api-key" }, "API key"),
    input,
    h(
      "p",
      { class: "muted small" },
      "A tenant key opens its sessions; the admin key (SA01_AUTH_ADMIN_KEY) opens provider " +
        "settings and the cluster view. The key is kept in this tab only.",
    ),
    error,
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    error.hidden = true;
    try {
      await ctx.signIn(input.value);
    } catch (failure) {
      replace(error, failure.status === 401 ? "That key is not valid." : failure.message);
      error.hidden = false;
      button.disabled = false;
      input.focus();
    }
  });
  replace(el, form);
  input.focus();
}
