// Server-sent events over fetch(): EventSource cannot send an Authorization header, so the
// console reads the response body as a stream and parses the event-stream format itself
// (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).

/** A parser fed with text chunks; calls onEvent({event, data, id}) for each complete event. */
export class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.skipLineFeed = false;
    this.reset();
    this.lastEventId = "";
  }

  reset() {
    this.data = [];
    this.event = "";
    this.id = null;
  }

  /** Feed decoded text; complete lines are interpreted, a partial last line is kept. */
  push(text) {
    // A chunk that ended in "\r" ended a line; a "\n" starting the next is the same line end.
    if (this.skipLineFeed && text.startsWith("\n")) text = text.slice(1);
    this.buffer += text;
    this.skipLineFeed = this.buffer.endsWith("\r");
    const lines = this.buffer.split(/\r\n|\r|\n/);
    this.buffer = lines.pop();
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.startsWith(":")) return; // a comment: the server's heartbeat
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id" && !value.includes("\0")) this.id = value;
  }

  dispatch() {
    if (this.id !== null) this.lastEventId = this.id;
    if (this.data.length) {
      this.onEvent({
        event: this.event || "message",
        data: this.data.join("\n"),
        id: this.id ?? this.lastEventId,
      });
    }
    this.reset();
  }
}

/**
 * The events of a fetch() Response whose body is text/event-stream, as an async iterator of
 * {event, data, id}. Ends when the body ends; aborting the request's signal ends it too.
 */
export async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const queue = [];
  const parser = new SseParser((event) => queue.push(event));
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(value);
      while (queue.length) yield queue.shift();
    }
    parser.push("\n\n"); // a last event without its blank line still counts
    while (queue.length) yield queue.shift();
  } finally {
    reader.cancel().catch(() => {});
  }
}
