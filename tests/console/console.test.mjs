// Browser tests of the web console: playwright-core drives the system's Chromium (never a
// downloaded browser). Run by tests/e2e/test_console.py, which starts the gateway, scripts the
// fake LLM and passes what to expect through the environment:
//
//   CONSOLE_URL      the console, e.g. http://127.0.0.1:PORT/console/ui/
//   CHROMIUM_PATH    /usr/bin/chromium
//   TENANT_KEY       a tenant's API key;  ADMIN_KEY  the admin key
//   AGENT            the agent to create sessions with
//   STREAM_PROMPT / STREAM_ANSWER    a message and the answer the fake model streams for it
//   TOOL_PROMPT / TOOL_ANSWER / TOOL_NAME    a message whose turn calls TOOL_NAME, and its answer
//   BROWSER_AGENT / SHOT_PROMPT / SHOT_ANSWER   an agent with browser tools, a message whose turn
//                    takes a screenshot, and its answer
//   PROVIDER_NAME / PROVIDER_BASE / PROVIDER_SECRET   a provider to add in the settings page
//   SCREENSHOT_DIR   optional: a PNG of the page after each scenario goes there
//
// The scenarios run in order in one browser, each building on the one before.

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
    "ADMIN_KEY",
    "AGENT",
    "STREAM_PROMPT",
    "STREAM_ANSWER",
    "TOOL_PROMPT",
    "TOOL_ANSWER",
    "TOOL_NAME",
    "BROWSER_AGENT",
    "SHOT_PROMPT",
    "SHOT_ANSWER",
    "PROVIDER_NAME",
    "PROVIDER_BASE",
    "PROVIDER_SECRET",
  ].map((name) => [name, need(name)]),
);
const CONSOLE = new URL(env.CONSOLE_URL);
const API = new URL("../", CONSOLE);
const STEP_MS = 30_000;
const BROWSER_START_MS = 120_000; // the first screenshot starts a browser actor

let browser;
let context;
let page;
const pageErrors = [];
const consoleLines = [];
const shared = {}; // what one scenario leaves for the next

async function api(method, path, key, body) {
  const response = await fetch(new URL(path, API), {
    method,
    headers: { Authorization: `Bearer ${key}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

async function signIn(key) {
  await page.goto(CONSOLE.href);
  await page.getByLabel("API key").fill(key);
  await page.getByRole("button", { name: "Sign in" }).click();
}

async function signOutIfIn() {
  const button = page.getByRole("button", { name: "Sign out" });
  if (await button.isVisible()) await button.click();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
}

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  context.setDefaultTimeout(STEP_MS);
  page = await context.newPage();
  page.on("pageerror", (error) => pageErrors.push(String(error)));
  page.on("console", (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
});

after(async () => {
  if (consoleLines.length) console.log(`browser console:\n  ${consoleLines.join("\n  ")}`);
  await browser?.close();
});

describe("the web console", { concurrency: false }, () => {
  let shots = 0;
  afterEach(async (t) => {
    if (!process.env.SCREENSHOT_DIR || !page) return;
    shots += 1;
    const name = `${String(shots).padStart(2, "0")}-${t.name.replace(/[^a-z0-9]+/gi, "-").slice(0, 60)}.png`;
    await page.screenshot({ path: join(process.env.SCREENSHOT_DIR, name), fullPage: true }).catch(() => {});
  });

  test("is served with a strict Content-Security-Policy and an SPA fallback", async () => {
    const response = await page.goto(new URL("sessions/some-deep-link", CONSOLE).href);
    assert.equal(response.status(), 200);
    const csp = response.headers()["content-security-policy"];
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'self'/);
    assert.match(csp, /require-trusted-types-for 'script'/);
    // Not signed in: the deep link lands on the sign-in form.
    await page.getByRole("heading", { name: "Sign in" }).waitFor();
    // The policy is enforced: HTML strings cannot reach the DOM.
    const blocked = await page.evaluate(() => {
      try {
        document.body.insertAdjacentHTML("beforeend", "<b>x</b>");
        return false;
      } catch (error) {
        return error instanceof TypeError;
      }
    });
    assert.equal(blocked, true, "Trusted Types should refuse an HTML string");
    const missing = await page.request.get(new URL("js/nope.js", CONSOLE).href);
    assert.equal(missing.status(), 404);
  });

  test("refuses a wrong key, then signs in with a tenant key kept in sessionStorage", async () => {
    await signIn("ac_not-a-real-key");
    await page.getByText("That key is not valid.").waitFor();
    await page.getByLabel("API key").fill(env.TENANT_KEY);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: "Sessions" }).waitFor();
    const stored = await page.evaluate(() => ({
      session: Object.values({ ...sessionStorage }),
      local: Object.values({ ...localStorage }),
    }));
    assert.ok(stored.session.includes(env.TENANT_KEY));
    assert.ok(!stored.local.includes(env.TENANT_KEY));
    // The admin-only pages are not offered to a tenant.
    assert.equal(await page.getByRole("link", { name: "Cluster", exact: true }).isVisible(), false);
  });

  test("creates a session", async () => {
    await page.getByLabel("Agent").selectOption(env.AGENT);
    await page.getByRole("button", { name: "New session" }).click();
    await page.waitForURL(/\/ui\/sessions\/[^/]+$/);
    shared.sessionId = decodeURIComponent(page.url().split("/").pop());
    await page.getByRole("heading", { name: `Session ${shared.sessionId}` }).waitFor();
    await page.locator('[data-testid="session-status"][data-status="active"]').waitFor();
  });

  test("sends a message and watches the answer stream in", async () => {
    // Record every text the answer shows, to see it grow before it is complete.
    await page.evaluate(() => {
      window.seenAnswers = [];
      const log = document.querySelector("ol.log");
      new MutationObserver(() => {
        for (const item of log.querySelectorAll("li.msg.assistant .text")) {
          window.seenAnswers.push(item.textContent);
        }
      }).observe(log, { childList: true, subtree: true, characterData: true });
    });
    await page.getByRole("textbox", { name: "Message", exact: true }).fill(env.STREAM_PROMPT);
    await page.getByRole("textbox", { name: "Message", exact: true }).press("Enter");
    await page.locator("li.msg.user", { hasText: env.STREAM_PROMPT }).waitFor();
    const answer = page.locator("li.msg.assistant.final").last();
    await answer.waitFor();
    assert.equal(await answer.locator(".text").textContent(), env.STREAM_ANSWER);
    const seen = await page.evaluate(() => window.seenAnswers);
    const partial = seen.filter((text) => text && text !== env.STREAM_ANSWER && env.STREAM_ANSWER.startsWith(text));
    assert.ok(
      new Set(partial).size >= 3,
      `expected the answer to appear piece by piece, saw ${JSON.stringify([...new Set(seen)].slice(0, 5))}`,
    );
    // Markup in the model's text is shown as text, never as elements.
    assert.equal(await answer.locator(".text b").count(), 0);
    await page.getByRole("button", { name: "Send" }).isEnabled();
  });

  test("shows a tool call with its policy decision and result as it happens", async () => {
    await page.getByRole("textbox", { name: "Message", exact: true }).fill(env.TOOL_PROMPT);
    await page.getByRole("button", { name: "Send" }).click();
    const tool = page.locator(`li.tool[data-tool="${env.TOOL_NAME}"]`).last();
    await tool.waitFor();
    await tool.locator('[data-decision="allowed"]').waitFor();
    await page.locator(`li.tool[data-tool="${env.TOOL_NAME}"][data-state="done"]`).last().waitFor();
    assert.match(await tool.locator("pre.args").textContent(), /6\*7/);
    assert.match(await tool.locator("pre.result").textContent(), /42/);
    await page.locator("li.msg.assistant.final", { hasText: env.TOOL_ANSWER }).waitFor();
  });

  test("shows a browser screenshot as the turn takes it", async () => {
    await page.getByRole("link", { name: "Sessions", exact: true }).click();
    await page.getByLabel("Agent").selectOption(env.BROWSER_AGENT);
    await page.getByRole("button", { name: "New session" }).click();
    await page.waitForURL(/\/ui\/sessions\/[^/]+$/);
    const box = page.getByRole("textbox", { name: "Message", exact: true });
    await box.fill(env.SHOT_PROMPT);
    await box.press("Enter");
    const shot = page.locator('li.tool[data-tool="browser_screenshot"]');
    await shot.locator('[data-decision="allowed"]').waitFor({ timeout: BROWSER_START_MS });
    const image = shot.locator("figure.shot img");
    await image.waitFor({ timeout: BROWSER_START_MS });
    assert.match(await image.getAttribute("src"), /^blob:/);
    const size = await image.evaluate(async (img) => {
      await img.decode();
      return [img.naturalWidth, img.naturalHeight];
    });
    assert.ok(size[0] > 0 && size[1] > 0, `the screenshot did not load: ${size}`);
    await page.locator("li.msg.assistant.final", { hasText: env.SHOT_ANSWER }).waitFor();
  });

  test("opens an existing session with its history", async () => {
    await page.getByRole("link", { name: "Sessions", exact: true }).click();
    const row = page.locator(`tr[data-session-id="${shared.sessionId}"]`);
    await row.waitFor();
    await row.getByRole("link", { name: shared.sessionId }).click();
    await page.getByRole("heading", { name: `Session ${shared.sessionId}` }).waitFor();
    // The history comes back from the event stream: messages, the tool call, the answers.
    await page.locator("li.msg.user", { hasText: env.STREAM_PROMPT }).waitFor();
    await page.locator("li.msg.assistant.final", { hasText: env.TOOL_ANSWER }).waitFor();
    await page.locator(`li.tool[data-tool="${env.TOOL_NAME}"][data-state="done"]`).waitFor();
    assert.equal(await page.locator("li.msg.assistant.final", { hasText: env.STREAM_ANSWER }).count(), 1);
    // A reload (a deep link) opens the same session.
    await page.reload();
    await page.locator("li.msg.user", { hasText: env.TOOL_PROMPT }).waitFor();
  });

  test("deletes a session", async () => {
    await page.getByRole("link", { name: "Sessions", exact: true }).click();
    const row = page.locator(`tr[data-session-id="${shared.sessionId}"]`);
    await row.getByRole("button", { name: "Delete" }).click();
    await row.getByRole("button", { name: "Confirm delete" }).click();
    await row.waitFor({ state: "detached" });
    await page.getByLabel("Show closed sessions").check();
    await page.locator(`tr[data-session-id="${shared.sessionId}"][data-status="closed"]`).waitFor();
    const read = await api("GET", `v1/sessions/${shared.sessionId}`, env.TENANT_KEY);
    assert.equal(read.body.status, "closed");
  });

  test("(admin) the cluster view shows the session hosts", async () => {
    await signOutIfIn();
    await page.getByLabel("API key").fill(env.ADMIN_KEY);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: "Cluster" }).waitFor();
    const hosts = page.getByRole("table", { name: "Session hosts" });
    await hosts.waitFor();
    assert.ok((await hosts.locator("tbody tr").count()) >= 1);
    await page.getByRole("table", { name: "Pools" }).waitFor();
    assert.equal(await page.getByRole("link", { name: "Sessions", exact: true }).isVisible(), false);
  });

  test("(admin) changes a provider setting and sees its key masked", async (t) => {
    const probe = await api("GET", "v1/settings/providers", env.ADMIN_KEY);
    if (probe.status === 404) {
      t.skip("PENDING: the settings API (GET/PUT /v1/settings/providers) is not wired into this gateway");
      return;
    }
    assert.equal(probe.status, 200, JSON.stringify(probe.body));
    await page.getByRole("link", { name: "Providers" }).click();
    await page.getByRole("heading", { name: "Providers", exact: true }).waitFor();
    await page.getByRole("button", { name: "Add provider" }).click();
    const card = page.locator("fieldset.provider").last();
    await card.getByLabel("Name").fill(env.PROVIDER_NAME);
    await card.getByLabel("Kind (LiteLLM prefix)").fill("openai");
    await card.getByLabel("Base URL").fill(env.PROVIDER_BASE);
    await card.getByLabel("Models (one per line)").fill("fake-a");
    await card.getByLabel("API key").fill(env.PROVIDER_SECRET);
    await page.getByRole("button", { name: "Save" }).click();
    await page.getByText("Provider settings saved.").waitFor();

    const saved = page.locator(`fieldset.provider[data-provider="${env.PROVIDER_NAME}"]`);
    const masked = saved.locator('[data-testid="masked-key"]');
    await masked.waitFor();
    const shown = await masked.textContent();
    assert.notEqual(shown, env.PROVIDER_SECRET);
    assert.match(shown, /…/);
    assert.ok(env.PROVIDER_SECRET.endsWith(shown.split("…").pop()));
    assert.equal(await saved.getByLabel("API key").inputValue(), "");
    assert.ok(!(await page.content()).includes(env.PROVIDER_SECRET), "the clear key is in the page");

    // After a reload the key is still masked, and the API never gave it back in clear.
    await page.reload();
    await saved.locator('[data-testid="masked-key"]').waitFor();
    assert.ok(!(await page.content()).includes(env.PROVIDER_SECRET));
    const read = await api("GET", "v1/settings/providers", env.ADMIN_KEY);
    assert.ok(!JSON.stringify(read.body).includes(env.PROVIDER_SECRET));

    // Test connection answers (whatever the provider says), then the provider is removed again.
    await saved.getByRole("button", { name: "Test connection" }).click();
    await saved.locator(".test-result.ok, .test-result.failed").waitFor();
    await saved.getByRole("button", { name: "Remove provider" }).click();
    await page.getByRole("button", { name: "Save" }).click();
    await page.getByText("Provider settings saved.").waitFor();
    assert.equal(await page.locator(`fieldset.provider[data-provider="${env.PROVIDER_NAME}"]`).count(), 0);
  });

  test("raised no uncaught errors in the page", () => {
    assert.deepEqual(pageErrors, []);
  });
});
