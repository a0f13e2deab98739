// Building DOM nodes without HTML strings: every string becomes a text node, so model and tool
// output can never become markup (the page's CSP also makes every HTML-parsing sink throw).

/**
 * h("li", {class: "msg", dataset: {id}}, "text", child) -> an element.
 * Attributes: class, dataset, on<event> (listeners), hidden/disabled/... (properties when the
 * element has them), anything else as an attribute.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, ...children);
  return el;
}

/** Append children: nodes as they are, strings and numbers as text, arrays flattened. */
export function append(el, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace every child of ``el``. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, ...children);
}

/** A short, readable time for an ISO timestamp. */
export function shortTime(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  const today = new Date().toDateString() === when.toDateString();
  return today ? when.toLocaleTimeString() : when.toLocaleString();
}

/** A value as pretty JSON text, cut to ``limit`` characters. */
export function jsonText(value, limit = 4000) {
  let text;
  try {
    text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
  } catch {
    text = String(value);
  }
  if (text === undefined) text = "";
  return text.length > limit ? `${text.slice(0, limit)}… (${text.length - limit} more)` : text;
}

/** A table from column titles and rows of cells (nodes or text). */
export function table(caption, columns, rows, attrs = {}) {
  return h(
    "table",
    attrs,
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c))))),
  );
}
