// Approvals in the web console, in a real browser: a turn whose calculator call the tenant's
// policy sends to a person shows the call in the session view; approving, editing and rejecting
// it there resumes the turn to its answer. Run by tests/e2e/test_console.py
// (test_console_approvals), which sets the policy, scripts the fake LLM and passes:
//
//   CONSOLE_URL, CHROMIUM_PATH, TENANT_KEY, AGENT   as for console.test.mjs
//   REASON                                  the policy's reason (it has markup: shown as text)
//   APPROVE_PROMPT / APPROVE_ANSWER         a turn whose call (6*7) is approved, and its answer
//   EDIT_PROMPT / EDIT_ANSWER / EDIT_SHOWN  a turn whose call (hostile arguments with markup,
//                                           EDIT_SHOWN is their text) is edited to 6*8
//   REJECT_PROMPT / REJECT_ANSWER           a turn whose call is rejected with a message
//   CANCEL_PROMPT                           a turn whose waiting call is left, the turn cancelled
//   SCREENSHOT_DIR                          optional: a PNG after each scenario

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, afterEach, before, describe, test } from "node:test";

import { chromium } from "playwright-core";

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run through tests/e2e/test_console.py)`);
  return value;
}

const env = Object.fromEntries(
  [
    "CONSOLE_URL",
    "TENANT_KEY",
    "AGENT",
    "REASON",
    "APPROVE_PROMPT",
    "APPROVE_ANSWER",
    "EDIT_PROMPT",
    "EDIT_ANSWER",
    "EDIT_SHOWN",
    "REJECT_PROMPT",
    "REJECT_ANSWER",
    "CANCEL_PROMPT",
  ].map((name) => [name, need(name)]),
);
const CONSOLE = new URL(env.CONSOLE_URL);
const API = new URL("../", CONSOLE);
const STEP_MS = 30_000;

let browser;
let page;
const pageErrors = [];
const shared = {};

async function api(method, path) {
  const response = await fetch(new URL(path, API), {
    method,
    headers: { Authorization: `Bearer ${env.TENANT_KEY}` },
  });
  return { status: response.status, body: await response.json() };
}

async function send(text) {
  const box = page.getByRole("textbox", { name: "Message", exact: true });
  await box.fill(text);
  await box.press("Enter");
}

/** The one pending approval the panel shows, once it is there. */
async function pending() {
  const panel = page.getByRole("region", { name: "Waiting for your approval" });
  await panel.waitFor();
  const item = panel.locator("li.approval");
  await item.waitFor();
  assert.equal(await item.count(), 1);
  assert.equal(await item.getAttribute("data-tool"), "calculator");
  return { panel, item };
}

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  context.setDefaultTimeout(STEP_MS);
  page = await context.newPage();
  page.on("pageerror", (error) => pageErrors.push(String(error)));
});

after(async () => {
  await browser?.close();
});

describe("approvals in the web console", { concurrency: false }, () => {
  let shots = 0;
  afterEach(async (t) => {
    if (!process.env.SCREENSHOT_DIR || !page) return;
    shots += 1;
    const name = `approvals-${shots}-${t.name.replace(/[^a-z0-9]+/gi, "-").slice(0, 50)}.png`;
    await page.screenshot({ path: join(process.env.SCREENSHOT_DIR, name), fullPage: true }).catch(() => {});
  });

  test("signs in and opens a new session", async () => {
    await page.goto(CONSOLE.href);
    await page.getByLabel("API key").fill(env.TENANT_KEY);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByLabel("Agent").selectOption(env.AGENT);
    await page.getByRole("button", { name: "New session" }).click();
    await page.waitForURL(/\/ui\/sessions\/[^/]+$/);
    shared.sessionId = decodeURIComponent(page.url().split("/").pop());
    await page.locator('[data-testid="session-status"][data-status="active"]').waitFor();
  });

  test("shows the waiting call and approving it completes the turn", async () => {
    await send(env.APPROVE_PROMPT);
    const { panel, item } = await pending();
    assert.match(await item.locator("pre.args").textContent(), /"expression": "6\*7"/);
    assert.equal(await item.locator(".reason").textContent(), env.REASON);
    assert.equal(await item.locator(".reason b").count(), 0, "the reason's markup became elements");
    assert.match(await item.textContent(), /expires /);
    await page.locator('[data-testid="session-status"][data-status="awaiting_approval"]').waitFor();
    await page.locator('li.tool[data-tool="calculator"][data-state="waiting"]').waitFor();
    if (process.env.SCREENSHOT_DIR) {
      await page.screenshot({ path: join(process.env.SCREENSHOT_DIR, "approvals-pending.png") });
    }

    await item.getByRole("button", { name: "Approve", exact: true }).click();
    await page.locator("li.msg.assistant.final", { hasText: env.APPROVE_ANSWER }).waitFor();
    await panel.waitFor({ state: "hidden" });
    const tool = page.locator('li.tool[data-tool="calculator"]').last();
    await tool.locator('[data-decision="approve"]').waitFor();
    assert.match(await tool.locator("pre.result").textContent(), /42/);
    await page.locator('[data-testid="session-status"][data-status="active"]').waitFor();
  });

  test("edits hostile arguments, refusing invalid JSON, and the tool runs with the new ones", async () => {
    await send(env.EDIT_PROMPT);
    const { item } = await pending();
    // The model's markup is text in the page, never elements.
    assert.match(await item.locator("pre.args").textContent(), new RegExp(literal(env.EDIT_SHOWN)));
    assert.equal(await page.locator("li.approval img, li.tool img").count(), 0);

    await item.getByRole("button", { name: "Edit", exact: true }).click();
    const field = item.getByLabel("Arguments (JSON)");
    assert.match(await field.inputValue(), /expression/);
    await field.fill("{not json");
    await item.getByRole("button", { name: "Run with these arguments" }).click();
    await item.getByRole("alert").filter({ hasText: "Not valid JSON" }).waitFor();
    await field.fill('{"expression": "6*8"}');
    await item.getByRole("button", { name: "Run with these arguments" }).click();

    await page.locator("li.msg.assistant.final", { hasText: env.EDIT_ANSWER }).waitFor();
    const tool = page.locator('li.tool[data-tool="calculator"]').last();
    await tool.locator('[data-decision="edit"]').waitFor();
    assert.match(await tool.locator("pre.result").textContent(), /48/);
  });

  test("rejects with a message the model reads", async () => {
    await send(env.REJECT_PROMPT);
    const { item } = await pending();
    await item.getByRole("button", { name: "Reject", exact: true }).click();
    await item.getByLabel("Message for the model").fill("not today");
    await item.getByRole("button", { name: "Confirm reject" }).click();
    await page.locator("li.msg.assistant.final", { hasText: env.REJECT_ANSWER }).waitFor();

    const all = await api("GET", `v1/sessions/${encodeURIComponent(shared.sessionId)}/approvals?all=true`);
    assert.equal(all.status, 200);
    const statuses = all.body.items.map((a) => [a.status, a.message ?? null]).sort();
    assert.deepEqual(statuses, [["approved", null], ["edited", null], ["rejected", "not today"]]);
  });

  test("a reload shows the history and no pending approval", async () => {
    await page.reload();
    await page.locator("li.msg.assistant.final", { hasText: env.REJECT_ANSWER }).waitFor();
    assert.equal(await page.locator('[data-decision="reject"]').count(), 1);
    assert.equal(await page.getByRole("region", { name: "Waiting for your approval" }).isVisible(), false);
  });

  test("cancels a turn while its call waits", async () => {
    await send(env.CANCEL_PROMPT);
    const { panel } = await pending();
    await page.locator('[data-testid="session-status"][data-status="awaiting_approval"]').waitFor();
    await page.getByRole("button", { name: "Cancel turn" }).click();
    await page.locator("li.note", { hasText: "turn cancelled" }).waitFor();
    await panel.waitFor({ state: "hidden" });
    await page.locator('[data-testid="session-status"][data-status="active"]').waitFor();
    assert.equal(await page.getByRole("button", { name: "Cancel turn" }).isVisible(), false);
    const left = await api("GET", `v1/sessions/${encodeURIComponent(shared.sessionId)}/approvals`);
    assert.deepEqual(left.body.items, []);
  });

  test("raised no uncaught errors in the page", () => {
    assert.deepEqual(pageErrors, []);
  });
});

function literal(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
