// The console's shell: sign-in state, navigation (History API under <base href>) and the views.

import { Api, ApiError } from "./api.js";
import { h, replace } from "./dom.js";
import * as chat from "./views/chat.js";
import * as cluster from "./views/cluster.js";
import * as providers from "./views/providers.js";
import * as sessions from "./views/sessions.js";
import * as signin from "./views/signin.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const signout = document.getElementById("signout");
const toastBox = document.getElementById("toast");

const state = { api: null, me: null, unmount: null, toastTimer: 0 };

/** The route: the path under the console's base, without a trailing slash. */
function currentRoute() {
  const base = new URL(document.baseURI).pathname;
  const path = location.pathname.startsWith(base) ? location.pathname.slice(base.length) : "";
  return path.replace(/\/+$/, "");
}

function navigate(route, { replaceState = false } = {}) {
  const url = new URL(route || "./", document.baseURI);
  if (replaceState) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  render();
}

function toast(message, kind = "info") {
  toastBox.hidden = false;
  toastBox.className = `toast ${kind}`;
  replace(toastBox, message);
  clearTimeout(state.toastTimer);
  state.toastTimer = setTimeout(() => (toastBox.hidden = true), kind === "error" ? 8000 : 4000);
}

function showChrome() {
  const me = state.me;
  nav.hidden = !me;
  signout.hidden = !me;
  for (const link of nav.querySelectorAll("a[data-role]")) {
    link.hidden = !me || (link.dataset.role === "admin") !== me.admin;
    const route = link.getAttribute("href");
    const here = currentRoute() === route || currentRoute().startsWith(`${route}/`);
    if (here) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  replace(who, me ? (me.admin ? "admin key" : `tenant ${me.tenant_id}`) : "");
}

/** The view for a route: [module, params], or a redirect route as a string. */
function resolve(route) {
  if (!state.me) return route === "signin" ? [signin, {}] : "signin";
  const admin = state.me.admin;
  const home = admin ? "cluster" : "sessions";
  if (route === "" || route === "signin") return home;
  if (route === "sessions") return admin ? home : [sessions, {}];
  const open = route.match(/^sessions\/([^/]+)$/);
  if (open) return admin ? home : [chat, { sessionId: decodeURIComponent(open[1]) }];
  if (route === "providers") return admin ? [providers, {}] : home;
  if (route === "cluster") return admin ? [cluster, {}] : home;
  return [notFound, { route }];
}

const notFound = {
  mount(ctx, el, { route }) {
    replace(el, h("h1", {}, "Not found"), h("p", {}, `Nothing at “${route}”. `, link("./", "Home")));
  },
};

function link(route, text) {
  return h("a", { href: route, dataset: { route: "" } }, text);
}

async function signIn(key) {
  const api = new Api(key.trim());
  const me = await api.get("v1/whoami");
  api.remember();
  state.api = api;
  state.me = me;
  navigate("", { replaceState: true });
  return me;
}

function signOut(message) {
  Api.forget();
  state.api = null;
  state.me = null;
  navigate("signin", { replaceState: true });
  if (message) toast(message, "error");
}

/** An error from the API: sign out on 401 (the key is revoked or wrong), else tell. */
function failed(error) {
  if (error?.name === "AbortError") return;
  if (error instanceof ApiError && error.status === 401) {
    signOut(`Signed out: ${error.detail}`);
    return;
  }
  toast(error?.message || String(error), "error");
}

function render() {
  const target = resolve(currentRoute());
  if (typeof target === "string") {
    navigate(target, { replaceState: true });
    return;
  }
  if (state.unmount) state.unmount();
  state.unmount = null;
  showChrome();
  const [view, params] = target;
  const ctx = { api: state.api, me: state.me, navigate, toast, failed, signIn, link };
  main.replaceChildren();
  state.unmount = view.mount(ctx, main, params) || null;
}

document.addEventListener("click", (event) => {
  const anchor = event.target.closest?.("a[data-route]");
  if (!anchor || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  navigate(anchor.getAttribute("href"));
});
window.addEventListener("popstate", render);
signout.addEventListener("click", () => signOut());

async function boot() {
  const api = Api.stored();
  if (api) {
    try {
      state.me = await api.get("v1/whoami");
      state.api = api;
    } catch (error) {
      Api.forget();
      if (!(error instanceof ApiError && error.status === 401)) failed(error);
    }
  }
  render();
}

boot();
