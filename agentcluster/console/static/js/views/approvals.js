// A session's tool calls that wait for a person (GET .../approvals), each with Approve, Edit
// (new JSON arguments) and Reject (a message the model reads) controls that POST the decision
// to .../approvals/{tool_call_id}. The chat view asks for a refresh on each approval event.
//
// Everything shown comes from the model or the tenant's policy: it only reaches the page as
// text nodes or form values (h() never parses HTML).

import { h, jsonText, replace, shortTime } from "../dom.js";

export class ApprovalsPanel {
  constructor(ctx, path, signal) {
    this.ctx = ctx;
    this.path = `${path}/approvals`;
    this.signal = signal;
    this.loading = null; // the refresh in flight
    this.again = false; // another refresh was asked for meanwhile
    this.list = h("ul", { class: "approval-list" });
    this.root = h(
      "section",
      { class: "approvals card", "aria-labelledby": "approvals-title", hidden: true },
      h("h2", { id: "approvals-title" }, "Waiting for your approval"),
      this.list,
    );
  }

  /** Load the pending approvals again; calls made meanwhile fold into one more load. */
  refresh() {
    if (this.loading) {
      this.again = true;
      return this.loading;
    }
    this.loading = (async () => {
      try {
        do {
          this.again = false;
          const answer = await this.ctx.api.get(this.path, {}, this.signal);
          this.show(answer.items);
        } while (this.again && !this.signal.aborted);
      } catch (error) {
        // 404: no such session (the chat view says so) or a gateway without approvals.
        if (error.name !== "AbortError" && error.status !== 404) this.ctx.failed(error);
      } finally {
        this.loading = null;
      }
    })();
    return this.loading;
  }

  show(approvals) {
    const open = new Set(approvals.map((a) => a.tool_call_id));
    // Keep the items being edited as they are (a refresh must not wipe what is typed).
    const kept = new Map();
    for (const li of this.list.children) {
      if (open.has(li.dataset.toolCallId)) kept.set(li.dataset.toolCallId, li);
    }
    replace(this.list, approvals.map((a) => kept.get(a.tool_call_id) || this.item(a)));
    this.root.hidden = approvals.length === 0;
  }

  item(approval) {
    const id = approval.tool_call_id;
    const error = h("p", { class: "error", role: "alert", hidden: true });
    const buttons = h("div", { class: "row" });
    const li = h(
      "li",
      { class: "approval", dataset: { toolCallId: id, tool: approval.tool } },
      h(
        "div",
        { class: "tool-head" },
        h("span", { class: "tool-name" }, approval.tool),
        approval.expires_at
          ? h("span", { class: "muted small" }, `expires ${shortTime(approval.expires_at)}`)
          : null,
      ),
      approval.reason ? h("p", { class: "reason" }, approval.reason) : null,
      h("pre", { class: "args", "aria-label": "Arguments" }, jsonText(approval.arguments)),
      buttons,
      error,
    );
    const allowed = new Set(approval.decisions || ["approve", "edit", "reject"]);
    const decide = (body) => this.decide(li, id, body, error);
    if (allowed.has("approve")) {
      buttons.append(h("button", { type: "button", onclick: () => decide({ decision: "approve" }) }, "Approve"));
    }
    if (allowed.has("edit")) {
      buttons.append(h("button", { type: "button", class: "quiet", onclick: () => this.editForm(li, approval, decide, error) }, "Edit"));
    }
    if (allowed.has("reject")) {
      buttons.append(h("button", { type: "button", class: "danger quiet", onclick: () => this.rejectForm(li, id, decide) }, "Reject"));
    }
    return li;
  }

  editForm(li, approval, decide, error) {
    if (li.querySelector("form.edit")) return;
    const fieldId = `edit-${li.dataset.toolCallId}`;
    const text = h("textarea", { id: fieldId, name: "arguments", rows: 6, spellcheck: false });
    text.value = JSON.stringify(approval.arguments, null, 2);
    const form = h(
      "form",
      { class: "edit field", "aria-label": `Edit the arguments of ${approval.tool}` },
      h("label", { for: fieldId }, "Arguments (JSON)"),
      text,
      h("div", { class: "row" }, h("button", { type: "submit" }, "Run with these arguments")),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      let value;
      try {
        value = JSON.parse(text.value);
      } catch (problem) {
        this.showError(error, `Not valid JSON: ${problem.message}`);
        return;
      }
      if (!value || typeof value !== "object" || Array.isArray(value)) {
        this.showError(error, "The arguments must be a JSON object.");
        return;
      }
      decide({ decision: "edit", arguments: value });
    });
    li.insertBefore(form, error);
    text.focus();
  }

  rejectForm(li, id, decide) {
    if (li.querySelector("form.reject")) return;
    const fieldId = `reject-${id}`;
    const message = h("input", { id: fieldId, name: "message", maxlength: 32000, placeholder: "optional" });
    const form = h(
      "form",
      { class: "reject field", "aria-label": "Reject the call" },
      h("label", { for: fieldId }, "Message for the model"),
      message,
      h("div", { class: "row" }, h("button", { type: "submit", class: "danger" }, "Confirm reject")),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = message.value.trim();
      decide(text ? { decision: "reject", message: text } : { decision: "reject" });
    });
    li.insertBefore(form, li.lastChild);
    message.focus();
  }

  showError(el, text) {
    el.hidden = false;
    replace(el, text);
  }

  async decide(li, id, body, error) {
    for (const button of li.querySelectorAll("button")) button.disabled = true;
    try {
      await this.ctx.api.json("POST", `${this.path}/${encodeURIComponent(id)}`, { body, signal: this.signal });
      li.remove();
      this.root.hidden = this.list.children.length === 0;
      const done = { approve: "Approved", edit: "Edited", reject: "Rejected" }[body.decision];
      this.ctx.toast(`${done}: the turn goes on once every waiting call is decided.`);
    } catch (problem) {
      if (problem.name === "AbortError") return;
      for (const button of li.querySelectorAll("button")) button.disabled = false;
      if (problem.status === 409 || problem.status === 404) {
        this.ctx.toast(problem.message, "error");
        this.refresh();
      } else if (problem.status === 422) {
        this.showError(error, problem.message);
      } else {
        this.ctx.failed(problem);
      }
    }
  }
}
