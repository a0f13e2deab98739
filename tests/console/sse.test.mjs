// The console's SSE parser (agentcluster/console/static/js/sse.js) without a browser: the
// event-stream format as the gateway (sse-starlette) writes it, cut into arbitrary chunks.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { SseParser, readEvents } from "../../agentcluster/console/static/js/sse.js";

const STREAM =
  ": ping - 2026-01-01 00:00:00\r\n\r\n" +
  'event: delta\r\ndata: {"text":"Hel"}\r\n\r\n' +
  'event: turn.completed\r\nid: 7\r\ndata: {"seq":7}\r\n\r\n' +
  "data: line one\r\ndata: line two\r\n\r\n" +
  "event: delta\ndata:no space\n\n";

const EXPECTED = [
  { event: "delta", data: '{"text":"Hel"}', id: "" },
  { event: "turn.completed", data: '{"seq":7}', id: "7" },
  { event: "message", data: "line one\nline two", id: "7" },
  { event: "delta", data: "no space", id: "7" },
];

function parse(chunks) {
  const events = [];
  const parser = new SseParser((event) => events.push(event));
  for (const chunk of chunks) parser.push(chunk);
  return events;
}

describe("the SSE parser", () => {
  test("reads events, ids, multi-line data and skips heartbeats", () => {
    assert.deepEqual(parse([STREAM]), EXPECTED);
  });

  test("gives the same events however the stream is cut", () => {
    for (const size of [1, 2, 3, 5, 7, 13]) {
      const chunks = [];
      for (let i = 0; i < STREAM.length; i += size) chunks.push(STREAM.slice(i, i + size));
      assert.deepEqual(parse(chunks), EXPECTED, `chunks of ${size}`);
    }
  });

  test("a CR at the end of a chunk and LF at the start of the next are one line end", () => {
    assert.deepEqual(parse(["data: a\r", "\n\r", "\n"]), [{ event: "message", data: "a", id: "" }]);
  });

  test("reads a fetch Response body to its end, the last event without its blank line too", async () => {
    const bytes = new TextEncoder().encode('event: delta\r\ndata: {"i":1}\r\n\r\ndata: tail');
    const body = new ReadableStream({
      start(controller) {
        controller.enqueue(bytes.slice(0, 9));
        controller.enqueue(bytes.slice(9));
        controller.close();
      },
    });
    const events = [];
    for await (const event of readEvents(new Response(body))) events.push(event);
    assert.deepEqual(events, [
      { event: "delta", data: '{"i":1}', id: "" },
      { event: "message", data: "tail", id: "" },
    ]);
  });
});
