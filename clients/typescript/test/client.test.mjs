// @idemq/client against real idemq processes (`idemq api`, `idemq worker`)
// on a fresh seeded database. Tests run in order: some stop the worker.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  IdemqClient,
  IdemqError,
  MemoryStore,
  fingerprintOf,
  KEY_REUSED,
  OUTCOME_UNKNOWN,
  ABORTED,
} from "../dist/index.js";
import { startApi, startWorker, sql, quote, until, recordingFetch } from "./support.mjs";

const TOKEN = process.env.IDEMQ_TOKEN;
let api;
let worker;

before(async () => {
  api = await startApi();
});

after(async () => {
  await worker?.stop();
  await api?.stop();
});

function client(opts = {}) {
  const f = opts.fetch ?? recordingFetch();
  return {
    fetch: f,
    client: new IdemqClient({ baseUrl: api.url, token: TOKEN, store: new MemoryStore(), fetch: f, ...opts }),
  };
}

const opsWithKey = (key) => sql(`SELECT count(*) FROM operations WHERE idempotency_key = ${quote(key)}`).then(Number);
const auditFor = (type, id) =>
  sql(`SELECT count(*) FROM audit_log WHERE entity_type = ${quote(type)} AND entity_id = ${quote(id)}`).then(Number);

function mutating(log) {
  return log.filter((r) => r.method !== "GET");
}

// First, while no worker runs: the answer cannot be final within the wait.
test("202, then the wait, then the final answer", async () => {
  let started;
  const events = [];
  const { client: c } = client({
    waitSeconds: 1,
    onEvent: (e) => {
      events.push(e);
      // The worker starts only once the client holds a 202.
      if (e.type === "operation" && !started) started = startWorker();
    },
  });
  const result = await c.payInvoice("inv-1", { paymentMethod: "card" });
  worker = await started;
  assert.equal(result.status, 200);
  assert.equal(result.body.invoice.status, "PAID");
  assert.match(result.operationId, /^op_[0-9a-f]{32}$/);
  const kinds = events.map((e) => e.type);
  assert.equal(kinds[0], "send");
  assert.ok(kinds.includes("poll"), `polled after the 202: ${kinds}`);
  assert.equal(kinds.at(-1), "final");
  assert.deepEqual(await c.pending(), [], "a settled intent is forgotten");
  assert.equal(await opsWithKey(result.key), 1);
});

test("every intent's happy path: one operation and one effect each", async () => {
  const { client: c, fetch: f } = client();
  const paid = await c.payInvoice("inv-2", { paymentMethod: "card" });
  assert.equal(paid.status, 200);
  assert.equal(paid.body.invoice.id, "inv-2");
  assert.equal(paid.body.invoice.status, "PAID");
  assert.equal(paid.replayed, false);

  const approved = await c.approveApplication("app-1", { note: "ok" });
  assert.equal(approved.status, 200);
  assert.equal(approved.body.application.status, "APPROVED");
  assert.ok(approved.body.contract.id);

  const rejected = await c.rejectApplication("app-2", { reason: "no references" });
  assert.equal(rejected.status, 200);
  assert.equal(rejected.body.application.status, "REJECTED");

  const reading = await c.recordMeterReading({ contractId: "ctr-1", reading: 12.5 });
  assert.equal(reading.status, 201);
  assert.equal(reading.body.meterReading.reading, 12.5);

  const keys = [paid, approved, rejected, reading].map((r) => r.key);
  assert.equal(new Set(keys).size, 4, "one key per intent");
  for (const k of keys) assert.equal(await opsWithKey(k), 1);
  assert.equal(mutating(f.log).length, 4, "one request each");
  assert.equal(await auditFor("invoice", "inv-2"), 1);
});

test("a double call for one intent joins the first: one request, one promise's answer", async () => {
  const { client: c, fetch: f } = client();
  const [a, b] = await Promise.all([
    c.payInvoice("inv-3", { paymentMethod: "card" }),
    c.payInvoice("inv-3", { paymentMethod: "card" }),
  ]);
  assert.deepEqual(a, b);
  assert.equal(mutating(f.log).length, 1);
  assert.equal(await auditFor("invoice", "inv-3"), 1);
});

test("after completion, a replay of the key returns the same body", async () => {
  const { client: c } = client();
  const first = await c.payInvoice("inv-4", { paymentMethod: "card" });
  const res = await fetch(`${api.url}/invoices/inv-4/mark-paid`, {
    method: "PATCH",
    headers: { Authorization: `Bearer ${TOKEN}`, "Idempotency-Key": first.key, "Content-Type": "application/json" },
    body: JSON.stringify({ paymentMethod: "card" }),
  });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("idempotent-replayed"), "true");
  assert.deepEqual(await res.json(), first.body);

  // The intent was forgotten: paying again is a new intent, and the server's
  // stored refusal rejects with the typed error.
  const again = await c.payInvoice("inv-4", { paymentMethod: "card" }).catch((e) => e);
  assert.ok(again instanceof IdemqError, String(again));
  assert.equal(again.status, 409);
  assert.equal(again.type, "https://idemq.dev/problems/invoice-already-paid");
  assert.equal(again.problem.status, 409);
  assert.equal(again.stored, true);
  assert.equal(again.retryable, false);
  assert.equal(await auditFor("invoice", "inv-4"), 1);
});

test("a 422 idempotency-key-reused is thrown at once, never retried", async () => {
  const key = crypto.randomUUID();
  const first = await fetch(`${api.url}/invoices/inv-5/mark-paid`, {
    method: "PATCH",
    headers: { Authorization: `Bearer ${TOKEN}`, "Idempotency-Key": key, "Content-Type": "application/json" },
    body: JSON.stringify({ paymentMethod: "card" }),
  });
  assert.equal(first.status, 202);
  // A store that holds that key for another body: what a buggy caller does.
  const store = new MemoryStore();
  const path = "/invoices/inv-5/mark-paid";
  const body = { paymentMethod: "cash" };
  await store.put({
    id: "invoice.pay:inv-5",
    key,
    fingerprint: await fingerprintOf("PATCH", path, body),
    method: "PATCH",
    path,
    body,
    createdAt: Date.now(),
  });
  const { client: c, fetch: f } = client({ store });
  const logged = [];
  const origError = console.error;
  console.error = (...a) => logged.push(a.join(" "));
  const err = await c.payInvoice("inv-5", body).catch((e) => e);
  console.error = origError;
  assert.ok(err instanceof IdemqError, String(err));
  assert.equal(err.status, 422);
  assert.equal(err.type, KEY_REUSED);
  assert.equal(err.retryable, false);
  assert.equal(mutating(f.log).length, 1, "not retried");
  assert.ok(logged.some((l) => l.includes(KEY_REUSED)), "thrown loudly");
  assert.equal(await opsWithKey(key), 1);
});

test("a 400 is not retried and nothing is recorded", async () => {
  const { client: c, fetch: f } = client();
  const err = await c.payInvoice("inv-6", { paymentMethod: 7 }).catch((e) => e);
  assert.ok(err instanceof IdemqError, String(err));
  assert.equal(err.status, 400);
  assert.equal(err.type, "https://idemq.dev/problems/invalid-body");
  assert.equal(err.retryable, false);
  assert.equal(mutating(f.log).length, 1);
  assert.equal(await opsWithKey(err.key), 0);
  assert.deepEqual(await c.pending(), []);
});

test("401 and 413 are not retried", async () => {
  const badFetch = recordingFetch();
  const bad = new IdemqClient({ baseUrl: api.url, token: "idq_not_a_token", store: new MemoryStore(), fetch: badFetch });
  const unauthorized = await bad.payInvoice("inv-6", { paymentMethod: "card" }).catch((e) => e);
  assert.ok(unauthorized instanceof IdemqError, String(unauthorized));
  assert.equal(unauthorized.status, 401);
  assert.equal(unauthorized.type, "https://idemq.dev/problems/unauthorized");
  assert.equal(unauthorized.retryable, false);
  assert.equal(badFetch.log.length, 1);

  const { client: c, fetch: f } = client();
  const tooLarge = await c.payInvoice("inv-6", { paymentMethod: "x".repeat(70_000) }).catch((e) => e);
  assert.ok(tooLarge instanceof IdemqError, String(tooLarge));
  assert.equal(tooLarge.status, 413);
  assert.equal(tooLarge.type, "https://idemq.dev/problems/payload-too-large");
  assert.equal(mutating(f.log).length, 1);
  assert.equal(await opsWithKey(tooLarge.key), 0);
});

test("a 5xx that is not a stored answer (a proxy's 502) is retried with the same key", async () => {
  const inner = recordingFetch();
  let proxied = 0;
  // A gateway in front of idemq fails once before forwarding anything.
  const gateway = async (input, init) => {
    if ((init?.method ?? "GET") !== "GET" && proxied++ === 0) {
      return new Response("bad gateway", { status: 502, headers: { "content-type": "text/plain" } });
    }
    return inner(input, init);
  };
  const { client: c } = client({ fetch: gateway, backoff: { baseMs: 10, capMs: 20 } });
  const result = await c.payInvoice("inv-16", { paymentMethod: "card" });
  assert.equal(result.status, 200);
  assert.equal(proxied, 2);
  assert.equal(mutating(inner.log).length, 1);
  assert.equal(mutating(inner.log)[0].key, result.key);
  assert.equal(await opsWithKey(result.key), 1);
});

test("a 429 is retried after Retry-After, with the same key", async () => {
  const limited = await startApi({ IDEMQ_RATE_LIMIT_SENSITIVE: "1/s" });
  try {
    // Spend this second's budget so that the client's first try gets 429.
    const spend = () =>
      fetch(`${limited.url}/invoices/inv-7/mark-paid`, {
        method: "PATCH",
        headers: { Authorization: `Bearer ${TOKEN}`, "Idempotency-Key": "spend", "Content-Type": "application/json" },
        body: "{bad",
      });
    await spend();
    const f = recordingFetch();
    const c = new IdemqClient({ baseUrl: limited.url, token: TOKEN, store: new MemoryStore(), fetch: f, backoff: { baseMs: 1, capMs: 1 } });
    const result = await c.payInvoice("inv-8", { paymentMethod: "card" });
    assert.equal(result.status, 200);
    const sent = mutating(f.log);
    assert.ok(sent.length >= 2, `retried: ${JSON.stringify(sent)}`);
    assert.equal(sent[0].status, 429);
    assert.equal(sent.at(-1).status, 200);
    assert.equal(new Set(sent.map((r) => r.key)).size, 1, "same key on every try");
    const gap = sent[1].at - sent[0].at;
    // Retry-After is whole seconds (1 here); backoff alone would be 1 ms.
    assert.ok(gap >= 990, `waited ${gap} ms before the retry`);
    assert.equal(await opsWithKey(result.key), 1);
  } finally {
    await limited.stop();
  }
});

test("a dropped response is sent again with the same key: one operation", async () => {
  let dropped = 0;
  const inner = recordingFetch();
  const dropping = async (input, init) => {
    const res = await inner(input, init);
    if ((init?.method ?? "GET") !== "GET" && dropped === 0) {
      dropped += 1;
      // The server answered; the caller never sees it.
      await res.arrayBuffer();
      throw new TypeError("fetch failed (response dropped by the test)");
    }
    return res;
  };
  const { client: c } = client({ fetch: dropping, backoff: { baseMs: 10, capMs: 50 } });
  const result = await c.payInvoice("inv-9", { paymentMethod: "card" });
  const sent = mutating(inner.log);
  assert.equal(dropped, 1);
  assert.equal(sent.length, 2);
  assert.equal(sent[0].key, sent[1].key);
  assert.equal(sent[0].body, sent[1].body);
  assert.equal(result.status, 200);
  assert.equal(result.replayed, true);
  assert.equal(await opsWithKey(result.key), 1);
  assert.equal(await auditFor("invoice", "inv-9"), 1);
});

test("the API restarted during a wait: the call still resolves", async () => {
  await worker.stop();
  worker = undefined;
  const events = [];
  let killed;
  const { client: c } = client({
    waitSeconds: 5,
    // Room for a slow restart on a loaded machine.
    backoff: { baseMs: 50, capMs: 500 },
    maxAttempts: 200,
    retryBudget: { max: 200 },
    onEvent: (e) => {
      events.push(e);
      if (e.type === "poll" && !killed) {
        // Kill the API while the client long-polls it.
        killed = new Promise((r) => setTimeout(r, 200)).then(() => api.stop("SIGKILL"));
      }
    },
  });
  const call = c.payInvoice("inv-10", { paymentMethod: "card" });
  await until(() => killed !== undefined, "the client to poll");
  await killed;
  await until(() => events.some((e) => e.type === "retry"), "a retry after the API died");
  api = await startApi({}, api.port);
  worker = await startWorker();
  const result = await call;
  assert.equal(result.status, 200);
  assert.equal(result.body.invoice.status, "PAID");
  assert.ok(result.operationId);
  assert.equal(await opsWithKey(result.key), 1);
});

test("an abort stops the wait while the operation still finishes", async () => {
  await worker.stop();
  worker = undefined;
  const abort = new AbortController();
  let abortedAt;
  const { client: c } = client({
    waitSeconds: 4,
    onEvent: (e) => {
      // Abort while the client long-polls the operation.
      if (e.type === "poll" && !abortedAt)
        setTimeout(() => {
          abortedAt = Date.now();
          abort.abort();
        }, 100);
    },
  });
  const err = await c.payInvoice("inv-11", { paymentMethod: "card" }, { signal: abort.signal }).catch((e) => e);
  assert.ok(err instanceof IdemqError, String(err));
  assert.equal(err.type, ABORTED);
  assert.equal(err.outcomeUnknown, true);
  assert.match(err.operationId, /^op_/);
  const stoppedAfter = Date.now() - abortedAt;
  assert.ok(stoppedAfter < 2000, `the wait stopped ${stoppedAfter} ms after the abort (the poll holds 4 s)`);
  const pending = await c.pending();
  assert.deepEqual(pending.map((p) => p.id), ["invoice.pay:inv-11"]);

  worker = await startWorker();
  await until(
    async () => (await sql("SELECT status FROM invoices WHERE id = 'inv-11'")) === "PAID",
    "the operation to finish without the caller",
  );
  const resumed = await c.resume("invoice.pay:inv-11");
  assert.equal(resumed.status, 200);
  assert.equal(resumed.key, err.key);
  assert.equal(resumed.operationId, err.operationId);
  assert.equal(await opsWithKey(err.key), 1);
  assert.deepEqual(await c.pending(), []);
});

test("retries running out give an explicit outcome unknown with the key", async () => {
  const down = async () => {
    throw new TypeError("fetch failed (network down)");
  };
  const c = new IdemqClient({
    baseUrl: api.url,
    token: TOKEN,
    store: new MemoryStore(),
    fetch: down,
    maxAttempts: 3,
    backoff: { baseMs: 1, capMs: 5 },
  });
  const err = await c.payInvoice("inv-12", { paymentMethod: "card" }).catch((e) => e);
  assert.ok(err instanceof IdemqError, String(err));
  assert.equal(err.type, OUTCOME_UNKNOWN);
  assert.equal(err.outcomeUnknown, true);
  assert.equal(err.retryable, true);
  assert.match(err.key, /^[0-9a-f-]{36}$/);
  // Still pending: a later resume() sends it with the same key.
  const [p] = await c.pending();
  assert.equal(p.key, err.key);
});

test("the retry budget stops a retry storm across calls", async () => {
  let calls = 0;
  const down = async () => {
    calls += 1;
    throw new TypeError("fetch failed (network down)");
  };
  const c = new IdemqClient({
    baseUrl: api.url,
    token: TOKEN,
    store: new MemoryStore(),
    fetch: down,
    maxAttempts: 100,
    backoff: { baseMs: 1, capMs: 1 },
    retryBudget: { max: 5, perSecond: 0 },
  });
  const errs = await Promise.all(
    ["inv-13", "inv-14", "inv-15"].map((id) => c.payInvoice(id, { paymentMethod: "card" }).catch((e) => e)),
  );
  for (const e of errs) assert.equal(e.type, OUTCOME_UNKNOWN);
  assert.equal(calls, 3 + 5, "three first tries and the budget's five retries");
});

test("`idemq api` does not serve the demo page", async () => {
  const res = await fetch(`${api.url}/demo/`);
  assert.equal(res.status, 404);
});
