// The demo page served by `idemq dev` at /demo/, in headless Chromium driven
// by playwright-core (no browser download: Debian's /usr/bin/chromium).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chromium } from "playwright-core";
import { startDev, sql, quote, until } from "./support.mjs";

const CHROMIUM = "/usr/bin/chromium";
let dev;
let browser;

before(async () => {
  // Never a skip: the browser tests are how we know the page pays once.
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium`);
  dev = await startDev();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  await dev?.stop();
});

/** A browser context (one profile: tabs share localStorage) recording the keys sent for an invoice. */
async function contextFor(invoice) {
  const context = await browser.newContext();
  const keys = [];
  context.on("request", (r) => {
    if (r.method() === "PATCH" && new URL(r.url()).pathname === `/invoices/${invoice}/mark-paid`) {
      keys.push(r.headers()["idempotency-key"]);
    }
  });
  return { context, keys };
}

async function openPage(context) {
  const page = await context.newPage();
  await page.goto(`${dev.url}/demo/`);
  await page.waitForSelector('body[data-ready="true"]');
  return page;
}

const answersOf = (page, row) => page.locator(`[data-row="${row}"] .answers li.ok`);

async function waitForAnswers(page, row, n) {
  await page.waitForFunction(
    ([row, n]) => document.querySelectorAll(`[data-row="${row}"] .answers li.ok`).length >= n,
    [row, n],
    { timeout: 20_000 },
  );
  return answersOf(page, row).allTextContents();
}

/** The operations and the audit entries for one invoice's payment. */
async function effectsFor(invoice) {
  const ops = Number(
    await sql(`SELECT count(*) FROM operations WHERE kind = 'invoice.mark_paid' AND request->'params'->>'id' = ${quote(invoice)}`),
  );
  const audit = Number(
    await sql(`SELECT count(*) FROM audit_log WHERE entity_type = 'invoice' AND entity_id = ${quote(invoice)}`),
  );
  const status = await sql(`SELECT status FROM invoices WHERE id = ${quote(invoice)}`);
  return { ops, audit, status };
}

test("the page is served at /demo/ with the client", async () => {
  const res = await fetch(`${dev.url}/demo/`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type"), /text\/html/);
  assert.match(await res.text(), new RegExp(`<meta name="idemq-token" content="${dev.token}">`), "dev's token injected");
  const js = await fetch(`${dev.url}/demo/index.js`);
  assert.equal(js.status, 200);
  assert.match(js.headers.get("content-type"), /javascript/);
});

test("double-click Pay: one operation, one audit entry, both clicks show the same result", async () => {
  const { context, keys } = await contextFor("inv-1");
  try {
    const page = await openPage(context);
    await page.dblclick('[data-row="inv-1"] button.pay');
    const texts = await waitForAnswers(page, "inv-1", 2);
    assert.equal(texts.length, 2);
    assert.equal(texts[0], texts[1]);
    assert.match(texts[0], /^200 PAID · key /);
    assert.equal(new Set(keys).size, 1, `keys sent: ${keys}`);
    assert.deepEqual(await effectsFor("inv-1"), { ops: 1, audit: 1, status: "PAID" });
    await page.waitForFunction(() => document.querySelector('[data-row="inv-1"] .status')?.textContent === "PAID", null, {
      timeout: 10_000,
    });
  } finally {
    await context.close();
  }
});

test("the first response dropped: the same key is sent again, the invoice is paid once", async () => {
  const { context } = await contextFor("inv-2");
  try {
    const page = await openPage(context);
    const sent = [];
    await page.route("**/invoices/inv-2/mark-paid", async (route) => {
      sent.push(route.request().headers()["idempotency-key"]);
      if (sent.length === 1) {
        // The server gets the request and answers; the page never sees it.
        const answered = await route.fetch();
        assert.equal(answered.status() < 500, true);
        await route.abort("failed");
      } else {
        await route.continue();
      }
    });
    await page.click('[data-row="inv-2"] button.pay');
    const [text] = await waitForAnswers(page, "inv-2", 1);
    assert.match(text, /^200 PAID/);
    assert.ok(sent.length >= 2, `requests seen: ${sent.length}`);
    assert.equal(new Set(sent).size, 1, `keys sent: ${sent}`);
    assert.ok(text.endsWith(sent[0]), `the answer names the key: ${text}`);
    assert.deepEqual(await effectsFor("inv-2"), { ops: 1, audit: 1, status: "PAID" });
  } finally {
    await context.close();
  }
});

test("the flaky-network switch drops the next answer: the page retries with the same key, one effect", async () => {
  const { context, keys } = await contextFor("inv-5");
  try {
    const page = await openPage(context);
    await page.check("#flaky");
    await page.click('[data-row="inv-5"] button.pay');
    const [text] = await waitForAnswers(page, "inv-5", 1);
    assert.match(text, /^200 PAID/);
    assert.equal(keys.length, 2, `requests: ${keys}`);
    assert.equal(new Set(keys).size, 1);
    assert.equal(await page.isChecked("#flaky"), false, "the switch drops one answer");
    assert.deepEqual(await effectsFor("inv-5"), { ops: 1, audit: 1, status: "PAID" });
  } finally {
    await context.close();
  }
});

test("reload in flight: the page shows the same operation and its result, no new key", async () => {
  const { context, keys } = await contextFor("inv-3");
  try {
    const page = await openPage(context);
    let processed;
    await page.route("**/invoices/inv-3/mark-paid", async (route) => {
      if (!processed) {
        // The server takes the request; its answer is still in flight when
        // the page reloads (this route is never fulfilled).
        processed = route.fetch();
        await processed;
        return;
      }
      await route.continue();
    });
    await page.click('[data-row="inv-3"] button.pay');
    await until(() => processed !== undefined, "the request to leave");
    await processed;
    const keyBefore = await page.locator('[data-row="inv-3"] .op').getAttribute("data-key");
    assert.equal(keyBefore, keys[0]);
    await page.reload();
    await page.waitForSelector('body[data-ready="true"]');
    const [text] = await waitForAnswers(page, "inv-3", 1);
    assert.match(text, /^200 PAID/);
    assert.ok(text.endsWith(keyBefore), `after the reload the page follows key ${keyBefore}: ${text}`);
    assert.equal(await page.locator('[data-row="inv-3"] .op').getAttribute("data-key"), keyBefore);
    assert.ok(keys.length >= 2, `resent after the reload: ${keys}`);
    assert.equal(new Set(keys).size, 1, `keys sent: ${keys}`);
    const opKeys = await sql(
      `SELECT idempotency_key FROM operations WHERE kind = 'invoice.mark_paid' AND request->'params'->>'id' = 'inv-3'`,
    );
    assert.equal(opKeys, keyBefore, "one operation, under the page's key");
    assert.deepEqual(await effectsFor("inv-3"), { ops: 1, audit: 1, status: "PAID" });
    assert.deepEqual(
      await page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith("idemq:"))),
      [],
      "the settled intent is forgotten",
    );
  } finally {
    await context.close();
  }
});

test("two tabs paying the same invoice: one operation", async () => {
  const { context, keys } = await contextFor("inv-4");
  try {
    const tabA = await openPage(context);
    const tabB = await openPage(context);
    // Tab A's request is held until tab B has sent its own: both in flight.
    let releaseA;
    const heldA = new Promise((r) => (releaseA = r));
    await tabA.route("**/invoices/inv-4/mark-paid", async (route) => {
      await heldA;
      await route.continue();
    });
    await tabA.click('[data-row="inv-4"] button.pay');
    await until(() => keys.length >= 1, "tab A's request");
    await tabB.click('[data-row="inv-4"] button.pay');
    await until(() => keys.length >= 2, "tab B's request");
    releaseA();
    const [a] = await waitForAnswers(tabA, "inv-4", 1);
    const [b] = await waitForAnswers(tabB, "inv-4", 1);
    assert.match(a, /^200 PAID/);
    // One tab's answer may be the other's replay: the same result either way.
    const result = (t) => t.replace(" (replayed)", "");
    assert.equal(result(a), result(b), "both tabs show the same result");
    assert.equal(new Set(keys).size, 1, `keys sent: ${keys}`);
    assert.deepEqual(await effectsFor("inv-4"), { ops: 1, audit: 1, status: "PAID" });
  } finally {
    await context.close();
  }
});
