// One session: its history and live activity, and a composer.
//
// Two SSE streams feed one renderer: the session's event stream (GET .../events, from seq 0:
// the history, then live events and deltas, resumed after a drop) and, for a message sent here,
// the turn's own stream (POST .../messages with Accept: text/event-stream). The same event or
// delta can come from both, so the renderer skips what it has seen (events by seq, deltas by
// turn and index); each stream is in order, so what gets through is in order too.
//
// A turn that pauses for approvals (turn.awaiting_approval) ends the message's stream; the
// pending calls show in an approvals panel (views/approvals.js), refreshed on every approval
// event, and the resumed turn arrives on the session's event stream.

import { newIdempotencyKey } from "../api.js";
import { h, jsonText, replace } from "../dom.js";
import { ApprovalsPanel } from "./approvals.js";

const RETRY_MS = [500, 1000, 2000, 5000, 10000];

export function mount(ctx, el, { sessionId }) {
  const controller = new AbortController();
  const path = `v1/sessions/${encodeURIComponent(sessionId)}`;
  const view = new ChatView(ctx, sessionId, path, controller.signal);
  replace(el, view.root);
  view.start();
  return () => {
    controller.abort();
    view.dispose();
  };
}

class ChatView {
  constructor(ctx, sessionId, path, signal) {
    this.ctx = ctx;
    this.sessionId = sessionId;
    this.path = path;
    this.signal = signal;
    this.seen = new Set(); // event seqs rendered
    this.deltas = new Set(); // `${turn}:${index}` rendered
    this.turns = new Map(); // turn_id -> {steps: Map(step -> element), toolSteps: Set}
    this.tools = new Map(); // tool_call_id -> ToolItem
    this.blobUrls = [];
    this.resumeAfter = 0; // the event stream's last seq (it is complete and in order)
    this.running = null;
    this.paused = null; // a turn waiting for approvals (it can still be cancelled)
    this.closed = false;
    this.build();
  }

  build() {
    this.status = h("span", { class: "badge", dataset: { testid: "session-status" } }, "…");
    this.agent = h("span", { class: "muted" });
    this.live = h("span", { class: "live", title: "event stream" }, "connecting");
    this.cancel = h("button", { type: "button", class: "quiet", hidden: true }, "Cancel turn");
    this.log = h("ol", { class: "log", role: "log", "aria-live": "polite", "aria-label": "Conversation" });
    this.input = h("textarea", {
      id: "message",
      name: "message",
      rows: 3,
      required: true,
      maxlength: 32000,
      placeholder: "Message the agent (Enter sends, Shift+Enter for a new line)",
    });
    this.send = h("button", { type: "submit" }, "Send");
    this.approvals = new ApprovalsPanel(this.ctx, this.path, this.signal);
    this.form = h(
      "form",
      { class: "composer", "aria-label": "Send a message" },
      h("label", { for: "message", class: "visually-hidden" }, "Message"),
      this.input,
      this.send,
    );
    this.root = h(
      "section",
      { class: "chat", "aria-labelledby": "chat-title" },
      h(
        "div",
        { class: "heading" },
        h("h1", { id: "chat-title" }, "Session ", h("code", {}, this.sessionId)),
        h("span", { class: "row" }, this.agent, this.status, this.live, this.cancel),
      ),
      this.log,
      this.approvals.root,
      this.form,
    );
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.form.requestSubmit();
      }
    });
    this.cancel.addEventListener("click", () => this.cancelTurn());
  }

  async start() {
    try {
      const session = await this.ctx.api.get(this.path, {}, this.signal);
      replace(this.agent, `agent ${session.agent}`);
      this.setStatus(session.status);
    } catch (error) {
      if (error.name === "AbortError") return;
      if (error.status === 404) {
        replace(this.root, h("h1", {}, "Session not found"), h("p", {}, this.ctx.link("sessions", "All sessions")));
        return;
      }
      this.ctx.failed(error);
    }
    this.input.focus();
    this.approvals.refresh();
    this.follow();
  }

  dispose() {
    for (const url of this.blobUrls) URL.revokeObjectURL(url);
  }

  setStatus(status) {
    if (this.closed) return; // closed is final
    this.closed = status === "closed";
    this.status.className = `badge ${status}`;
    this.status.dataset.status = status;
    replace(this.status, status);
    this.input.disabled = this.closed;
    this.send.disabled = this.closed || this.running !== null;
    if (this.closed) this.input.placeholder = "This session is closed.";
  }

  setLive(text, kind) {
    this.live.className = `live ${kind}`;
    replace(this.live, text);
  }

  /** The session's event stream, resumed after a drop until the view goes away. */
  async follow() {
    let failures = 0;
    while (!this.signal.aborted) {
      try {
        this.setLive("live", "on");
        const items = this.ctx.api.stream("GET", `${this.path}/events`, {
          query: { after: this.resumeAfter },
          signal: this.signal,
        });
        for await (const item of items) {
          failures = 0;
          if (item.event !== "delta" && item.event !== "overflow") {
            this.resumeAfter = Math.max(this.resumeAfter, item.data.seq || 0);
          }
          this.render(item);
        }
      } catch (error) {
        if (this.signal.aborted || error.name === "AbortError") return;
        if (error.status === 401 || error.status === 403 || error.status === 404) {
          this.ctx.failed(error);
          return;
        }
        failures += 1;
      }
      if (this.signal.aborted) return;
      this.setLive("reconnecting", "off");
      const wait = RETRY_MS[Math.min(failures, RETRY_MS.length - 1)];
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }

  async submit() {
    const content = this.input.value.trim();
    if (!content || this.closed || this.running) return;
    this.running = "sending";
    this.send.disabled = true;
    this.input.value = "";
    try {
      const items = this.ctx.api.stream("POST", `${this.path}/messages`, {
        body: { content },
        headers: { "Idempotency-Key": newIdempotencyKey() },
        signal: this.signal,
      });
      for await (const item of items) this.render(item);
    } catch (error) {
      if (error.name === "AbortError") return;
      if (!this.input.value) this.input.value = content; // not lost: try again
      this.ctx.failed(error);
    } finally {
      this.turnEnded();
      this.input.focus();
    }
  }

  async cancelTurn() {
    try {
      const running = this.running && this.running !== "sending" ? this.running : null;
      const turnId = running || this.paused || undefined;
      const out = await this.ctx.api.json("POST", `${this.path}/cancel`, { body: { turn_id: turnId } });
      if (!out.cancelled) this.ctx.toast("Nothing to cancel.");
    } catch (error) {
      this.ctx.failed(error);
    }
  }

  turnStarted(turnId) {
    this.running = turnId;
    if (this.paused === turnId) this.paused = null;
    this.send.disabled = true;
    this.cancel.hidden = false;
  }

  turnEnded() {
    this.running = null;
    this.send.disabled = this.closed;
    this.cancel.hidden = !this.paused;
  }

  /** A turn's outcome: it is neither running nor paused any more. */
  turnOver(turnId) {
    // A turn cancelled (or failed) while paused leaves its calls cancelled: no approval event.
    if (this.paused === turnId || !this.approvals.root.hidden) this.approvals.refresh();
    if (this.paused === turnId) this.paused = null;
    if (this.running === turnId || !this.running) this.turnEnded();
  }

  // -- rendering ------------------------------------------------------------------------

  render({ event, data }) {
    if (event === "delta") return this.delta(data);
    if (event === "overflow") return; // the event stream ends and is resumed from its last seq
    if (typeof data.seq === "number") {
      if (this.seen.has(data.seq)) return;
      this.seen.add(data.seq);
    }
    const handler = HANDLERS[data.type];
    if (handler) handler.call(this, data);
  }

  /** Add an item to the log, in seq order when it comes from an event with a seq (the two
   * streams may deliver a session's events out of order with each other). */
  add(item, seq) {
    const stick = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 40;
    let before = null;
    if (typeof seq === "number") {
      item.dataset.seq = String(seq);
      before = [...this.log.children].find((li) => Number(li.dataset.seq) > seq) || null;
    }
    this.log.insertBefore(item, before);
    if (stick) this.log.scrollTop = this.log.scrollHeight;
    return item;
  }

  turn(turnId) {
    let turn = this.turns.get(turnId);
    if (!turn) {
      turn = { steps: new Map(), toolSteps: new Set() };
      this.turns.set(turnId, turn);
    }
    return turn;
  }

  /** The assistant's text of one step of a turn, created on first use. */
  step(turnId, step, seq) {
    const turn = this.turn(turnId);
    let item = turn.steps.get(step);
    if (!item) {
      const text = h("div", { class: "text" });
      item = this.add(
        h("li", { class: "msg assistant streaming", dataset: { turnId, step: String(step) } }, h("div", { class: "who" }, "assistant"), text),
        seq,
      );
      item.text = text;
      turn.steps.set(step, item);
    }
    return item;
  }

  delta(data) {
    const key = `${data.turn_id}:${data.index}`;
    if (this.deltas.has(key)) return;
    this.deltas.add(key);
    const item = this.step(data.turn_id, data.step);
    item.text.append(data.text); // a text node: model output is never markup
    if (this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 120) {
      this.log.scrollTop = this.log.scrollHeight;
    }
  }

  tool(data) {
    let item = this.tools.get(data.tool_call_id);
    if (!item) {
      const head = h("div", { class: "tool-head" }, h("span", { class: "tool-name" }, data.tool));
      const body = h("div", { class: "tool-body" });
      const li = this.add(
        h("li", { class: "tool", dataset: { toolCallId: data.tool_call_id, tool: data.tool } }, head, body),
        data.seq,
      );
      item = { li, head, body, state: null };
      this.tools.set(data.tool_call_id, item);
    }
    return item;
  }

  async showAttachment(item, attachment) {
    const figure = h("figure", { class: "shot" }, h("figcaption", { class: "muted small" }, "screenshot"));
    item.body.append(figure);
    try {
      const blob = await this.ctx.api.blob(
        `${this.path}/attachments/${encodeURIComponent(attachment.attachment_id)}`,
        this.signal,
      );
      const url = URL.createObjectURL(blob);
      this.blobUrls.push(url);
      const stick = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 40;
      const image = h("img", { src: url, alt: `screenshot from ${item.li.dataset.tool}` });
      image.addEventListener("load", () => {
        if (stick) this.log.scrollTop = this.log.scrollHeight;
      });
      figure.prepend(h("a", { href: url, target: "_blank", rel: "noopener", title: "full size" }, image));
    } catch (error) {
      if (error.name !== "AbortError") figure.append(h("p", { class: "error" }, `could not load it: ${error.message}`));
    }
  }

  note(text, kind = "", seq = undefined) {
    return this.add(h("li", { class: `note ${kind}` }, text), seq);
  }
}

function toolState(item, state, text) {
  item.state = state;
  item.li.dataset.state = state;
  const badge = item.head.querySelector(".tool-state") || item.head.appendChild(h("span", { class: "tool-state" }));
  badge.className = `tool-state ${state}`;
  replace(badge, text);
}

const HANDLERS = {
  "session.created"(e) {
    this.note(`session created (agent ${e.agent})`, "quiet", e.seq);
  },
  "session.closed"(e) {
    this.note(`session closed${e.reason ? `: ${e.reason}` : ""}`, "quiet", e.seq);
    this.setStatus("closed");
  },
  "message.received"(e) {
    this.add(
      h("li", { class: "msg user", dataset: { messageId: e.message_id, turnId: e.turn_id } }, h("div", { class: "who" }, "you"), h("div", { class: "text" }, e.content)),
      e.seq,
    );
  },
  "turn.started"(e) {
    this.turn(e.turn_id);
    this.turnStarted(e.turn_id);
    if (e.resumed) this.setStatus("active");
  },
  "llm.completed"(e) {
    const turn = this.turn(e.turn_id);
    if (e.tool_calls?.length) turn.toolSteps.add(e.step);
    const item = turn.steps.get(e.step);
    if (e.content) {
      const step = this.step(e.turn_id, e.step, e.seq);
      step.dataset.seq ||= String(e.seq); // a draft from deltas takes its place in the order
      replace(step.text, e.content); // the whole text: deltas missed in a reconnect come back
      step.classList.remove("streaming");
    } else if (item) {
      item.remove();
      turn.steps.delete(e.step);
    }
  },
  "tool.requested"(e) {
    const item = this.tool(e);
    item.body.prepend(h("pre", { class: "args" }, jsonText(e.arguments)));
    if (!item.state) toolState(item, "requested", "requested");
  },
  "tool.decided"(e) {
    const item = this.tool(e);
    const verdict = e.allowed ? "allowed" : "denied";
    const engine = e.engine ? ` by ${e.engine}` : "";
    item.body.append(
      h("p", { class: `decision ${verdict}`, dataset: { decision: verdict } }, `policy: ${verdict}${engine}`, e.reason ? ` — ${e.reason}` : ""),
    );
    if (!e.allowed) toolState(item, "denied", "denied");
    else if (item.state !== "done" && item.state !== "error") toolState(item, "running", "running");
  },
  "tool.approval_requested"(e) {
    const item = this.tool(e);
    toolState(item, "waiting", "waiting for approval");
    item.body.append(
      h("p", { class: "decision waiting", dataset: { decision: "ask" } }, "policy: ask a person", e.reason ? ` — ${e.reason}` : ""),
    );
    this.approvals.refresh();
  },
  "tool.approval_decided"(e) {
    const item = this.tool(e);
    const done = { approve: "approved", edit: "edited", reject: "rejected" }[e.decision] || e.decision;
    const how = e.expired ? `${done} (expired unanswered)` : `${done} by ${e.decided_by}`;
    item.body.append(h("p", { class: `decision ${e.decision}`, dataset: { decision: e.decision } }, `person: ${how}`, e.message ? ` — ${e.message}` : ""));
    if (e.decision === "edit" && e.arguments) item.body.append(h("pre", { class: "args edited" }, jsonText(e.arguments)));
    toolState(item, "decided", done);
    this.approvals.refresh();
  },
  "turn.awaiting_approval"(e) {
    this.note("waiting for approval", "quiet", e.seq);
    this.setStatus("awaiting_approval");
    for (const item of this.turn(e.turn_id).steps.values()) item.classList.remove("streaming");
    this.paused = e.turn_id;
    if (this.running === e.turn_id || !this.running) this.turnEnded();
    this.approvals.refresh();
  },
  "tool.completed"(e) {
    const item = this.tool(e);
    const ms = e.latency_ms ? ` in ${Math.round(e.latency_ms)} ms` : "";
    if (e.ok) {
      toolState(item, "done", `done${ms}`);
      const { attachment, ...rest } = e.result && typeof e.result === "object" ? e.result : { value: e.result };
      const shown = e.result && typeof e.result === "object" ? rest : e.result;
      item.body.append(h("pre", { class: "result" }, jsonText(shown)));
      if (attachment?.attachment_id) this.showAttachment(item, attachment);
    } else {
      if (item.state !== "denied") toolState(item, "error", `failed${ms}`);
      item.body.append(h("p", { class: "error" }, e.error || "the tool failed"));
    }
  },
  "turn.completed"(e) {
    const turn = this.turn(e.turn_id);
    const last = Math.max(-1, ...[...turn.steps.keys()].filter((s) => !turn.toolSteps.has(s)));
    const item = last >= 0 ? turn.steps.get(last) : this.step(e.turn_id, 1e9, e.seq);
    replace(item.text, e.content);
    item.classList.remove("streaming");
    item.classList.add("final");
    const u = e.usage || {};
    if (u.total_tokens) item.append(h("div", { class: "usage muted small" }, `${u.total_tokens} tokens`));
    this.turnOver(e.turn_id);
    this.setStatus("active");
  },
  "turn.failed"(e) {
    this.note(`turn failed (${e.error_type}): ${e.error}`, "error", e.seq);
    for (const item of this.turn(e.turn_id).steps.values()) item.classList.remove("streaming");
    this.turnOver(e.turn_id);
    this.setStatus("active");
  },
  "turn.cancelled"(e) {
    this.note(`turn cancelled${e.reason ? `: ${e.reason}` : ""}`, "quiet", e.seq);
    for (const item of this.turn(e.turn_id).steps.values()) item.classList.remove("streaming");
    this.turnOver(e.turn_id);
    this.setStatus("active");
  },
};
