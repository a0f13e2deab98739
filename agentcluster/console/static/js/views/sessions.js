// The tenant's sessions: list (paged), create, open, delete (close).

import { h, replace, shortTime } from "../dom.js";

const PAGE = 50;
const CONFIRM_MS = 4000;

export function mount(ctx, el) {
  const controller = new AbortController();
  const signal = controller.signal;
  const agentSelect = h("select", { id: "new-agent", name: "agent", required: true });
  const createButton = h("button", { type: "submit", disabled: true }, "New session");
  const showClosed = h("input", { id: "show-closed", type: "checkbox" });
  const rows = h("tbody");
  const more = h("button", { type: "button", class: "quiet", hidden: true }, "Load more");
  const empty = h("p", { class: "muted", hidden: true }, "No sessions yet.");
  let cursor = null;
  let loaded = [];

  const form = h(
    "form",
    { class: "row", "aria-label": "New session" },
    h("label", { for: "new-agent" }, "Agent"),
    agentSelect,
    createButton,
  );

  replace(
    el,
    h("div", { class: "heading" }, h("h1", {}, "Sessions"), form),
    h(
      "p",
      { class: "row" },
      h("label", { class: "check" }, showClosed, " Show closed sessions"),
    ),
    h(
      "table",
      { class: "list", "aria-label": "Sessions" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["Session", "Agent", "Status", "Updated", ""].map((t) => h("th", { scope: "col" }, t)),
        ),
      ),
      rows,
    ),
    empty,
    more,
  );

  function row(session) {
    const closed = session.status === "closed";
    const del = h(
      "button",
      { type: "button", class: "danger quiet", disabled: closed },
      "Delete",
    );
    let armed = 0;
    del.addEventListener("click", async () => {
      if (!armed) {
        replace(del, "Confirm delete");
        armed = setTimeout(() => {
          armed = 0;
          replace(del, "Delete");
        }, CONFIRM_MS);
        return;
      }
      clearTimeout(armed);
      del.disabled = true;
      try {
        const updated = await ctx.api.json("DELETE", `v1/sessions/${session.session_id}`);
        ctx.toast(`Session ${session.session_id} deleted.`);
        loaded = loaded.map((s) => (s.session_id === updated.session_id ? updated : s));
        draw();
      } catch (error) {
        del.disabled = false;
        ctx.failed(error);
      }
    });
    return h(
      "tr",
      { dataset: { sessionId: session.session_id, status: session.status } },
      h("td", {}, ctx.link(`sessions/${encodeURIComponent(session.session_id)}`, session.session_id)),
      h("td", {}, session.agent),
      h("td", {}, h("span", { class: `badge ${session.status}` }, session.status)),
      h("td", {}, shortTime(session.updated_at)),
      h("td", { class: "actions" }, del),
    );
  }

  function draw() {
    const visible = loaded.filter((s) => showClosed.checked || s.status !== "closed");
    replace(rows, visible.map(row));
    empty.hidden = visible.length > 0;
    more.hidden = !cursor;
  }

  async function load(reset) {
    try {
      const page = await ctx.api.get("v1/sessions", { limit: PAGE, cursor: reset ? null : cursor }, signal);
      loaded = reset ? page.items : loaded.concat(page.items);
      cursor = page.next_cursor;
      draw();
    } catch (error) {
      ctx.failed(error);
    }
  }

  async function loadAgents() {
    try {
      const agents = await ctx.api.get("v1/agents", {}, signal);
      replace(
        agentSelect,
        agents.items.map((a) => h("option", { value: a.name, title: a.description }, a.name)),
      );
      createButton.disabled = agents.items.length === 0;
    } catch (error) {
      ctx.failed(error);
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    createButton.disabled = true;
    try {
      const created = await ctx.api.json("POST", "v1/sessions", {
        body: { agent: agentSelect.value },
      });
      ctx.navigate(`sessions/${encodeURIComponent(created.session_id)}`);
    } catch (error) {
      createButton.disabled = false;
      ctx.failed(error);
    }
  });
  showClosed.addEventListener("change", draw);
  more.addEventListener("click", () => load(false));

  loadAgents();
  load(true);
  return () => controller.abort();
}
