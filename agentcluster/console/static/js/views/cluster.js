// The cluster (admin key): session hosts, actor pools and LLM circuit breakers, refreshed while
// the view is open.

import { h, replace, table } from "../dom.js";

const REFRESH_MS = 5000;

export function mount(ctx, el) {
  const controller = new AbortController();
  const body = h("div", { class: "cluster" }, h("p", { class: "muted" }, "Loading…"));
  const stamp = h("span", { class: "muted small" });
  const refresh = h("button", { type: "button", class: "quiet" }, "Refresh");
  replace(el, h("div", { class: "heading" }, h("h1", {}, "Cluster"), h("span", { class: "row" }, stamp, refresh)), body);

  let timer = 0;
  async function load() {
    clearTimeout(timer);
    try {
      const cluster = await ctx.api.get("v1/cluster", {}, controller.signal);
      replace(body, ...draw(cluster));
      replace(stamp, `updated ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      if (error.name === "AbortError") return;
      if (error.status === 404) {
        replace(body, h("p", { class: "error" }, "This gateway has no cluster endpoint (GET /v1/cluster)."));
        return;
      }
      ctx.failed(error);
    }
    if (!controller.signal.aborted) timer = setTimeout(load, REFRESH_MS);
  }
  refresh.addEventListener("click", load);
  load();
  return () => {
    clearTimeout(timer);
    controller.abort();
  };
}

function draw(cluster) {
  const totals = cluster.hosts.reduce(
    (sum, host) => ({ sessions: sum.sessions + host.active_sessions, turns: sum.turns + host.running_turns }),
    { sessions: 0, turns: 0 },
  );
  return [
    h(
      "ul",
      { class: "stats", "aria-label": "Totals" },
      stat("hosts", cluster.hosts.length),
      stat("active sessions", totals.sessions),
      stat("running turns", totals.turns),
      stat("pools", cluster.pools.length),
    ),
    cluster.problems.length
      ? h("ul", { class: "problems", "aria-label": "Problems" }, cluster.problems.map((p) => h("li", { class: "error" }, p)))
      : null,
    h("h2", {}, "Session hosts"),
    cluster.hosts.length
      ? table(
          null,
          ["Host", "Active sessions", "Running turns", "Subscribers", "Activations", "Passivations"],
          cluster.hosts.map((x) => [x.host_id, x.active_sessions, x.running_turns, x.subscribers, x.activations, x.passivations]),
          { class: "list", "aria-label": "Session hosts", dataset: { testid: "hosts" } },
        )
      : h("p", { class: "muted" }, "No session hosts."),
    h("h2", {}, "Pools"),
    cluster.pools.length
      ? table(
          null,
          ["Pool", "Size (min–max)", "Idle", "Leased", "Starting", "Waiting", "Leases", "Exhausted", "Failed"],
          cluster.pools.map((p) => [
            p.pool,
            `${p.size} (${p.min_size}–${p.max_size})`,
            p.idle,
            p.leased,
            p.starting,
            p.waiters,
            p.leases_granted,
            p.exhausted,
            p.members_failed,
          ]),
          { class: "list", "aria-label": "Pools" },
        )
      : h("p", { class: "muted" }, "No pools running (they start with the first tool call)."),
    h("h2", {}, "LLM circuit breakers"),
    cluster.breakers.length
      ? table(
          null,
          ["Model", "State"],
          cluster.breakers.map((b) => [b.model, h("span", { class: `badge breaker-${b.state}` }, b.state)]),
          { class: "list", "aria-label": "Breakers" },
        )
      : h("p", { class: "muted" }, "No model called yet on this node."),
  ];
}

function stat(label, value) {
  return h("li", {}, h("strong", {}, String(value)), h("span", { class: "muted" }, label));
}
