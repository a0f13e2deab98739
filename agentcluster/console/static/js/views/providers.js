// LLM provider settings (admin key): providers with their masked keys, per-agent models, and a
// test-connection per provider.
//
// Contract (GET/PUT /v1/settings/providers, POST /v1/settings/providers/{name}/test): GET gives
// {version, updated_at, providers: [{name, kind, api_base, models, api_key (masked or null)}],
// agents: {agent: {model, fallback_models}}}; PUT takes the same with clear keys, where the
// masked value from GET keeps the stored key and null removes it. A clear key typed here is sent
// once and never shown again: the form keeps only the masked value the server returns.

import { h, replace, shortTime } from "../dom.js";

const PATH = "v1/settings/providers";
const KINDS = ["openai", "anthropic", "azure", "gemini", "vertex_ai", "bedrock", "mistral", "groq", "ollama"];

export function mount(ctx, el) {
  const controller = new AbortController();
  const view = new ProvidersView(ctx, controller.signal);
  replace(el, view.root);
  view.load();
  return () => controller.abort();
}

function lines(text) {
  return text
    .split(/[\n,]/)
    .map((s) => s.trim())
    .filter(Boolean);
}

class ProvidersView {
  constructor(ctx, signal) {
    this.ctx = ctx;
    this.signal = signal;
    this.version = null;
    this.cards = [];
    this.agentRows = [];
    this.stamp = h("span", { class: "muted small" });
    this.list = h("div", { class: "providers" });
    this.agents = h("tbody");
    this.agentNames = h("datalist", { id: "agent-names" }); // offered in the agent fields
    this.error = h("p", { class: "error", role: "alert", hidden: true });
    this.save = h("button", { type: "submit" }, "Save");
    this.form = h(
      "form",
      { "aria-label": "Provider settings" },
      this.list,
      h(
        "datalist",
        { id: "provider-kinds" },
        KINDS.map((kind) => h("option", { value: kind })),
      ),
      h("p", {}, h("button", { type: "button", class: "quiet", onclick: () => this.addCard() }, "Add provider")),
      h("h2", {}, "Agent models"),
      h(
        "p",
        { class: "muted small" },
        "Per agent: the model and fallbacks as <provider>/<model>; they replace the agent profile's.",
      ),
      h(
        "table",
        { class: "list", "aria-label": "Agent models" },
        h("thead", {}, h("tr", {}, ["Agent", "Model", "Fallbacks", ""].map((t) => h("th", { scope: "col" }, t)))),
        this.agents,
      ),
      this.agentNames,
      h("p", {}, h("button", { type: "button", class: "quiet", onclick: () => this.addAgent() }, "Add agent")),
      this.error,
      h("div", { class: "row" }, this.save, this.stamp),
    );
    this.body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
    this.root = h("section", {}, h("div", { class: "heading" }, h("h1", {}, "Providers")), this.body);
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
  }

  async load() {
    this.ctx.api
      .get("v1/agents", {}, this.signal)
      .then((agents) => replace(this.agentNames, agents.items.map((a) => h("option", { value: a.name }))))
      .catch(() => {}); // only suggestions
    try {
      this.show(await this.ctx.api.get(PATH, {}, this.signal));
      replace(this.body, this.form);
    } catch (error) {
      if (error.name === "AbortError") return;
      if (error.status === 404) {
        replace(
          this.body,
          h(
            "p",
            { class: "error", role: "alert" },
            "Provider settings are not available on this gateway: GET /v1/settings/providers " +
              "answered 404 (the settings API is not installed here).",
          ),
        );
        return;
      }
      replace(this.body, h("p", { class: "error", role: "alert" }, error.message));
      this.ctx.failed(error);
    }
  }

  show(settings) {
    this.version = settings.version;
    replace(this.stamp, settings.updated_at ? `version ${settings.version}, saved ${shortTime(settings.updated_at)}` : "never saved");
    this.cards = [];
    this.list.replaceChildren();
    for (const provider of settings.providers) this.addCard(provider);
    if (!settings.providers.length) this.list.append(h("p", { class: "muted empty" }, "No providers yet."));
    this.agentRows = [];
    this.agents.replaceChildren();
    for (const [agent, models] of Object.entries(settings.agents || {})) this.addAgent(agent, models);
  }

  addCard(provider = null) {
    this.list.querySelector(".empty")?.remove();
    const card = new ProviderCard(this, provider, this.cards.length);
    this.cards.push(card);
    this.list.append(card.root);
    if (!provider) card.name.focus();
  }

  removeCard(card) {
    this.cards = this.cards.filter((c) => c !== card);
    card.root.remove();
  }

  addAgent(agent = "", models = { model: "", fallback_models: [] }) {
    const name = h("input", { "aria-label": "Agent", value: agent, required: true, placeholder: "default", list: "agent-names" });
    const model = h("input", { "aria-label": "Model", value: models.model, required: true, placeholder: "local/demo" });
    const fallbacks = h("input", {
      "aria-label": "Fallbacks",
      value: (models.fallback_models || []).join(", "),
      placeholder: "other/model, …",
    });
    const row = h("tr", {}, h("td", {}, name), h("td", {}, model), h("td", {}, fallbacks));
    const entry = { row, name, model, fallbacks };
    row.append(
      h(
        "td",
        {},
        h(
          "button",
          {
            type: "button",
            class: "quiet danger",
            onclick: () => {
              this.agentRows = this.agentRows.filter((r) => r !== entry);
              row.remove();
            },
          },
          "Remove",
        ),
      ),
    );
    this.agentRows.push(entry);
    this.agents.append(row);
  }

  document() {
    const agents = {};
    for (const r of this.agentRows) {
      agents[r.name.value.trim()] = { model: r.model.value.trim(), fallback_models: lines(r.fallbacks.value) };
    }
    return { version: this.version, providers: this.cards.map((c) => c.value()), agents };
  }

  async submit() {
    this.save.disabled = true;
    this.error.hidden = true;
    try {
      const saved = await this.ctx.api.json("PUT", PATH, { body: this.document() });
      this.show(saved);
      this.ctx.toast("Provider settings saved.");
    } catch (error) {
      const detail =
        error.status === 409
          ? `${error.detail} — reload to see the other change.`
          : error.message;
      replace(this.error, detail);
      this.error.hidden = false;
      if (error.status === 401) this.ctx.failed(error);
    } finally {
      this.save.disabled = false;
    }
  }
}

class ProviderCard {
  constructor(view, provider, index) {
    this.view = view;
    this.stored = provider?.api_key ?? null; // the masked key, as the server showed it
    const id = (what) => `provider-${index}-${what}`;
    const field = (what, label, input, hint) =>
      h("div", { class: "field" }, h("label", { for: id(what) }, label), input, hint ? h("span", { class: "muted small" }, hint) : null);
    this.name = h("input", { id: id("name"), value: provider?.name ?? "", required: true, pattern: "[a-z0-9][a-z0-9_\\-]{0,63}" });
    this.kind = h("input", { id: id("kind"), value: provider?.kind ?? "openai", required: true, list: "provider-kinds" });
    this.base = h("input", { id: id("base"), type: "url", value: provider?.api_base ?? "", placeholder: "https://…/v1" });
    this.models = h("textarea", { id: id("models"), rows: 2, required: true }, (provider?.models ?? []).join("\n"));
    this.key = h("input", {
      id: id("key"),
      type: "password",
      autocomplete: "off",
      spellcheck: "false",
      placeholder: this.stored ? "leave empty to keep the stored key" : "none",
    });
    this.masked = h("span", { class: "masked", dataset: { testid: "masked-key" } }, this.stored ?? "no key");
    this.removeKey = h("input", { type: "checkbox", id: id("remove-key") });
    this.result = h("p", { class: "test-result", role: "status" });
    this.testModel = h("select", { "aria-label": "Model to test" });
    this.fillTestModels(provider?.models ?? []);
    const test = h("button", { type: "button", class: "quiet", onclick: () => this.test(), disabled: !provider }, "Test connection");
    this.root = h(
      "fieldset",
      { class: "card provider", dataset: { provider: provider?.name ?? "" } },
      h("legend", {}, provider?.name ?? "new provider"),
      h(
        "div",
        { class: "grid" },
        field("name", "Name", this.name, "agents use <name>/<model>"),
        field("kind", "Kind (LiteLLM prefix)", this.kind),
        field("base", "Base URL", this.base),
        field("models", "Models (one per line)", this.models),
        h(
          "div",
          { class: "field" },
          h("label", { for: id("key") }, "API key"),
          this.key,
          h("span", { class: "small" }, "stored: ", this.masked),
          this.stored ? h("label", { class: "check small" }, this.removeKey, " remove the stored key") : null,
        ),
      ),
      h(
        "div",
        { class: "row" },
        test,
        this.testModel,
        h("button", { type: "button", class: "quiet danger", onclick: () => view.removeCard(this) }, "Remove provider"),
      ),
      this.result,
    );
  }

  fillTestModels(models) {
    replace(this.testModel, models.map((m) => h("option", { value: m }, m)));
  }

  value() {
    const typed = this.key.value.trim();
    let apiKey = this.stored; // the masked value keeps the stored key
    if (typed) apiKey = typed;
    else if (this.removeKey.checked) apiKey = null;
    return {
      name: this.name.value.trim(),
      kind: this.kind.value.trim(),
      api_base: this.base.value.trim() || null,
      models: lines(this.models.value),
      api_key: apiKey,
    };
  }

  async test() {
    const name = this.root.dataset.provider;
    replace(this.result, "testing…");
    this.result.className = "test-result";
    try {
      const out = await this.view.ctx.api.json("POST", `${PATH}/${encodeURIComponent(name)}/test`, {
        body: this.testModel.value ? { model: this.testModel.value } : {},
      });
      this.result.className = `test-result ${out.ok ? "ok" : "failed"}`;
      this.result.dataset.ok = String(out.ok);
      const status = out.status ? ` (HTTP ${out.status})` : "";
      replace(this.result, `${out.ok ? "✓ reachable" : "✗ failed"}: ${out.model}, ${Math.round(out.latency_ms)} ms${status} — ${out.detail}`);
    } catch (error) {
      this.result.className = "test-result failed";
      replace(this.result, error.message);
      if (error.status === 401) this.view.ctx.failed(error);
    }
  }
}
