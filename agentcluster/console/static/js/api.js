// The HTTP API v1 client of the console: Bearer auth on every call, problem+json errors as
// ApiError, and SSE streams read through fetch() (see sse.js).

import { readEvents } from "./sse.js";

const KEY_ITEM = "agentcluster.console.key";

/** An error answer of the API (RFC 9457 problem details), or a network failure (status 0). */
export class ApiError extends Error {
  constructor(status, type, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.type = type || "";
    this.detail = detail || "";
  }

  /** The stable problem type's last segment, e.g. "not-found". */
  get kind() {
    return this.type.split("/").pop();
  }
}

/** Where the API lives: the console is served at <api base>ui/, so one level up. */
export function apiBase() {
  return new URL("../", document.baseURI);
}

/** A random Idempotency-Key (randomUUID needs a secure context; plain http hosts are not). */
export function newIdempotencyKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function problemOf(response) {
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    return new ApiError(response.status, body.type, body.detail || body.title);
  } catch {
    return new ApiError(response.status, "", text.slice(0, 300) || response.statusText);
  }
}

export class Api {
  constructor(key, base = apiBase()) {
    this.key = key;
    this.base = base;
  }

  /** The key kept for this browser tab (sessionStorage: gone when the tab closes). */
  static stored() {
    const key = sessionStorage.getItem(KEY_ITEM);
    return key ? new Api(key) : null;
  }

  remember() {
    sessionStorage.setItem(KEY_ITEM, this.key);
  }

  static forget() {
    sessionStorage.removeItem(KEY_ITEM);
  }

  url(path, query = {}) {
    const url = new URL(path, this.base);
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
    }
    return url;
  }

  async fetch(method, path, { body, query, headers = {}, signal } = {}) {
    const init = { method, signal, headers: { Authorization: `Bearer ${this.key}`, ...headers } };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    let response;
    try {
      response = await fetch(this.url(path, query), init);
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, "network", `the gateway did not answer (${error.message})`);
    }
    if (!response.ok) throw await problemOf(response);
    return response;
  }

  /** A JSON call; resolves to the parsed body (null for 204). */
  async json(method, path, options = {}) {
    const response = await this.fetch(method, path, options);
    if (response.status === 204) return null;
    return response.json();
  }

  get(path, query, signal) {
    return this.json("GET", path, { query, signal });
  }

  /** A file as a blob (e.g. a screenshot attachment). */
  async blob(path, signal) {
    return (await this.fetch("GET", path, { signal })).blob();
  }

  /**
   * An SSE stream: yields {event, data (parsed JSON), id} until the server ends it.
   * Throws ApiError when the server refuses before streaming.
   */
  async *stream(method, path, { body, query, headers = {}, signal } = {}) {
    const response = await this.fetch(method, path, {
      body,
      query,
      signal,
      headers: { Accept: "text/event-stream", ...headers },
    });
    for await (const message of readEvents(response)) {
      let data;
      try {
        data = JSON.parse(message.data);
      } catch {
        continue; // not one of ours
      }
      yield { event: message.event, data, id: message.id };
    }
  }
}
