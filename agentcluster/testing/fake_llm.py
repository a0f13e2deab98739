"""A scripted, OpenAI-compatible LLM server for tests, benchmarks and offline demos.

The server speaks the real wire protocol over loopback HTTP so that LiteLLM's (and the openai SDK's)
real network path runs: ``POST /v1/chat/completions`` (alias ``/chat/completions``) answers with a
``chat.completion`` JSON object, or with server-sent ``chat.completion.chunk`` events ending in
``data: [DONE]`` when the request has ``"stream": true``; ``GET /v1/models`` lists models.

What it answers is decided by a :class:`Script`, per request, in this order:

1. **rules**, in order: the first :class:`Rule` whose conditions all hold (model, text in the
   last user message, tools offered, structured output requested, a custom predicate) answers; a
   rule with ``times=N`` stops matching after N uses;
2. the **queue**: the next scripted action, consumed one per request;
3. the **default**: a callable or a fixed action; out of the box :func:`demo_reply`.

An action is a :class:`Reply` (text and/or :class:`ToolCall` s), a :class:`Failure` (an HTTP error
in OpenAI's error shape, e.g. 429 with ``Retry-After``), a :class:`Timeout` (say nothing for a
while, then answer 504) or a :class:`BrokenStream` (some content, then a malformed chunk: cut-off
JSON, bytes that are not SSE, or a chunk of the wrong shape; then the stream ends or goes on).

Wire details worth knowing:

* Streamed text is split into one chunk per word; a tool call's first chunk carries its id, type and
  name, later chunks only fragments of the arguments JSON (8 characters each) under the same index.
* ``finish_reason`` is ``tool_calls`` when the reply calls tools, ``length`` when the request's
  ``max_tokens`` cut the text, else ``stop``; a :class:`Reply` may force it.
* ``usage`` is in every non-streaming response and, when the request asks for it with
  ``stream_options: {"include_usage": true}``, in a last chunk with empty ``choices``. Token counts
  are rough on purpose: ``ceil(characters / 4)`` per text, plus 3 per message; they do not match
  tiktoken.
* A dict or list reply content is sent as its JSON text, which is how structured output
  (``response_format`` of type ``json_schema``) is answered.

Timing (:class:`Timing`, overridable per reply): ``ttft_s`` before the first streamed chunk,
``inter_chunk_s`` between chunks; a non-streaming response is sent after ``latency_s`` or, when that
is unset, after the time the same stream would have taken.

The default :func:`demo_reply`, used when nothing is scripted:

* structured output requested: a minimal JSON instance of the requested schema;
* the last message is a tool result: ``[demo] The tool returned: ...``;
* tools are offered and the last user message names one (``get_time`` or ``get time``), or asks
  for the time while a tool with ``time`` in its name is offered: a call to that tool with ``{}``;
* otherwise ``[demo] You said: <last user message>``.

Every request is recorded (:attr:`FakeLLM.requests`) for assertions.

Run it in-process (``async with FakeLLM(script) as llm``, or ``llm.start_in_thread()`` for
synchronous code and other event loops), or standalone as a demo LLM::

    python -m agentcluster.testing.fake_llm --port 8089 [--script script.yaml] \\
        [--latency-ms N] [--ttft-ms N] [--inter-chunk-ms N]

Script files are YAML or JSON: either a list of replies, or a mapping::

    replies:                       # the queue, consumed one per request
      - Hello!                     # a plain string is a text reply
      - content: {"answer": 42}    # structured output
      - tool_calls: [{name: get_weather, arguments: {city: Paris}}]
      - {type: failure, status: 429, retry_after: 1}
      - {type: timeout, seconds: 30}
    rules:                         # checked before the queue; the first match answers
      - {model: gpt-x, reply: {type: failure, status: 500}}
      - {when_last_user_contains: weather, reply: It is sunny., times: 2}
    default: "I have nothing scripted."   # optional; demo_reply when absent

A reply mapping without ``type`` is a reply; ``status`` implies a failure and ``seconds`` alone a
timeout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from agentcluster.testing._script import (
    Action,
    ActionLike,
    BrokenStream,
    Failure,
    FinishReason,
    RecordedRequest,
    Reply,
    Responder,
    Rule,
    Script,
    Timeout,
    Timing,
    ToolCall,
    action_from_data,
    demo_reply,
    example_from_schema,
)
from agentcluster.testing._server import FakeLLM

__all__ = [
    "Action",
    "ActionLike",
    "BrokenStream",
    "Failure",
    "FakeLLM",
    "FinishReason",
    "RecordedRequest",
    "Reply",
    "Responder",
    "Rule",
    "Script",
    "Timeout",
    "Timing",
    "ToolCall",
    "action_from_data",
    "demo_reply",
    "example_from_schema",
    "main",
]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m agentcluster.testing.fake_llm",
        description="A scripted OpenAI-compatible LLM for offline demos and tests.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=8089, help="port (default: 8089; 0 = any)")
    parser.add_argument("--script", type=Path, help="a YAML or JSON script file")
    parser.add_argument("--latency-ms", type=float, help="delay of non-streaming responses")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="delay before the first chunk")
    parser.add_argument("--inter-chunk-ms", type=float, default=0.0, help="delay between chunks")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake LLM in the foreground until interrupted; returns the exit status."""
    args = _parse_args(argv)
    try:
        script = Script.from_file(args.script) if args.script else Script()
        timing = Timing(
            latency_s=None if args.latency_ms is None else args.latency_ms / 1000,
            ttft_s=args.ttft_ms / 1000,
            inter_chunk_s=args.inter_chunk_ms / 1000,
        )
    except (OSError, ValueError) as exc:
        print(f"fake_llm: {exc}", file=sys.stderr)
        return 2
    llm = FakeLLM(script, timing=timing, host=args.host, port=args.port)
    llm.serve_forever(
        on_listening=lambda server: print(
            f"fake LLM serving an OpenAI-compatible API at {server.base_url}", flush=True
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
