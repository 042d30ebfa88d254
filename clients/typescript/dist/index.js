/** The server's problem types (stable URIs) the client decides on. */
export const PROBLEM_BASE = "https://idemq.dev/problems/";
export const KEY_REUSED = `${PROBLEM_BASE}idempotency-key-reused`;
/** Client-side conditions, in the same `type` field of {@link IdemqError}. */
export const OUTCOME_UNKNOWN = "urn:idemq:client:outcome-unknown";
export const ABORTED = "urn:idemq:client:aborted";
export const NETWORK_ERROR = "urn:idemq:client:network-error";
export class MemoryStore {
    records = new Map();
    async get(id) {
        return this.records.get(id);
    }
    async put(record) {
        this.records.set(record.id, { ...record });
    }
    async delete(id, key) {
        // Only the record of that key: a newer intent under the same id stays.
        if (this.records.get(id)?.key === key)
            this.records.delete(id);
    }
    async list() {
        return [...this.records.values()];
    }
}
/** Shared by every tab of the origin: a reload or a second tab sees the key. */
export class LocalStorageStore {
    storage;
    prefix;
    constructor(storage, prefix = "idemq:intent:") {
        this.storage = storage;
        this.prefix = prefix;
    }
    async get(id) {
        const raw = this.storage.getItem(this.prefix + id);
        if (raw === null)
            return undefined;
        try {
            return JSON.parse(raw);
        }
        catch {
            return undefined;
        }
    }
    async put(record) {
        this.storage.setItem(this.prefix + record.id, JSON.stringify(record));
    }
    async delete(id, key) {
        if ((await this.get(id))?.key === key)
            this.storage.removeItem(this.prefix + id);
    }
    async list() {
        const out = [];
        for (let i = 0; i < this.storage.length; i++) {
            const name = this.storage.key(i);
            if (name?.startsWith(this.prefix)) {
                const r = await this.get(name.slice(this.prefix.length));
                if (r)
                    out.push(r);
            }
        }
        return out;
    }
}
export function defaultStore() {
    const ls = globalThis.localStorage;
    return ls ? new LocalStorageStore(ls) : new MemoryStore();
}
/** The one error class: a refusal, a stored failure, or an unknown outcome. */
export class IdemqError extends Error {
    /** The problem's `type` (server URIs under https://idemq.dev/problems/) or a client `urn:`. */
    type;
    status;
    problem;
    /** Whether calling again (resume) can help. */
    retryable;
    /** The effect may or may not have happened: check later with `resume()`. */
    outcomeUnknown;
    intent;
    key;
    operationId;
    /** True when this is the operation's stored final answer. */
    stored;
    constructor(init) {
        super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
        this.name = "IdemqError";
        this.type = init.type;
        this.status = init.status;
        this.problem = init.problem;
        this.retryable = init.retryable;
        this.outcomeUnknown = init.outcomeUnknown ?? false;
        this.stored = init.stored ?? false;
        this.intent = init.intent;
        this.key = init.key;
        this.operationId = init.operationId;
    }
}
const DAY_MS = 24 * 3600 * 1000;
export class IdemqClient {
    options;
    baseUrl;
    fetchFn;
    store;
    waitSeconds;
    keyTtlMs;
    maxAttempts;
    baseMs;
    capMs;
    budgetMax;
    budgetPerSecond;
    budget;
    budgetAt = Date.now();
    timeoutSlackMs;
    locks;
    random;
    inFlight = new Map();
    constructor(options) {
        this.options = options;
        this.baseUrl = (options.baseUrl ?? "").replace(/\/$/, "");
        const f = options.fetch ?? globalThis.fetch;
        // Unbound `fetch` throws "Illegal invocation" in browsers.
        this.fetchFn = (input, init) => f.call(globalThis, input, init);
        this.store = options.store ?? defaultStore();
        this.waitSeconds = Math.min(30, Math.max(1, Math.floor(options.waitSeconds ?? 10)));
        this.keyTtlMs = options.keyTtlMs ?? DAY_MS;
        this.maxAttempts = options.maxAttempts ?? 8;
        this.baseMs = options.backoff?.baseMs ?? 200;
        this.capMs = options.backoff?.capMs ?? 10_000;
        this.budgetMax = options.retryBudget?.max ?? 20;
        this.budgetPerSecond = options.retryBudget?.perSecond ?? 0.5;
        this.budget = this.budgetMax;
        this.timeoutSlackMs = options.timeoutSlackMs ?? 10_000;
        const nav = globalThis.navigator;
        this.locks = options.locks === undefined ? (nav?.locks ?? null) : options.locks;
        this.random = options.random ?? Math.random;
    }
    /** Mark invoice `id` paid: intent `invoice.pay:<id>`. */
    payInvoice(id, body, opts) {
        return this.send({ intent: { action: "invoice.pay", target: id }, method: "PATCH", path: `/invoices/${enc(id)}/mark-paid`, body }, opts);
    }
    approveApplication(id, body = {}, opts) {
        return this.send({ intent: { action: "application.approve", target: id }, method: "PATCH", path: `/applications/${enc(id)}/approve`, body }, opts);
    }
    rejectApplication(id, body, opts) {
        return this.send({ intent: { action: "application.reject", target: id }, method: "PATCH", path: `/applications/${enc(id)}/reject`, body }, opts);
    }
    /** One reading of a contract: another value is another intent. */
    recordMeterReading(body, opts) {
        return this.send({ intent: { action: "meter-reading.record", target: body.contractId }, method: "POST", path: "/meter-readings", body }, opts);
    }
    /** Sends an intent and follows it to its final answer. */
    async send(req, opts = {}) {
        const id = intentId(req.intent);
        const fingerprint = await fingerprintOf(req.method, req.path, req.body);
        const joined = await this.joinable(id);
        if (joined && joined.record.fingerprint === fingerprint)
            return joined.join(opts.signal);
        const record = await this.withLock(id, async () => {
            const stored = await this.live(await this.store.get(id));
            if (stored && stored.fingerprint === fingerprint)
                return stored;
            // A new intent (or the same target with another body: a new intent too).
            const fresh = {
                id,
                key: randomKey(),
                fingerprint,
                method: req.method,
                path: req.path,
                body: req.body,
                createdAt: Date.now(),
            };
            await this.store.put(fresh);
            return fresh;
        });
        return this.follow(record, opts.signal);
    }
    /** Intents still unsettled (also those of an earlier page load or another tab). */
    async pending() {
        const out = [];
        for (const r of await this.store.list()) {
            const live = await this.live(r);
            if (live)
                out.push(live);
        }
        return out;
    }
    /** Follows a pending intent (by id `action:target` or its record) to its final answer. */
    async resume(intent, opts = {}) {
        const id = typeof intent === "string" ? intent : "key" in intent ? intent.id : intentId(intent);
        const joined = await this.joinable(id);
        if (joined)
            return joined.join(opts.signal);
        const record = await this.live(await this.store.get(id));
        if (!record) {
            throw new IdemqError({
                type: `${PROBLEM_BASE}not-found`,
                message: `No pending intent ${id}.`,
                retryable: false,
                intent: id,
            });
        }
        return this.follow(record, opts.signal);
    }
    /** The run in flight for `id`, unless every caller left it (then it is let finish first). */
    async joinable(id) {
        const flight = this.inFlight.get(id);
        if (!flight?.abandoned)
            return flight;
        await flight.done.catch(() => undefined);
        return undefined;
    }
    /** Drops expired records (the server has forgotten their keys). */
    async live(r) {
        if (!r)
            return undefined;
        if (Date.now() - r.createdAt >= this.keyTtlMs) {
            await this.store.delete(r.id, r.key);
            return undefined;
        }
        return r;
    }
    async withLock(id, fn) {
        // Two tabs creating the same intent at once must not make two keys.
        if (!this.locks)
            return fn();
        return this.locks.request(`idemq:intent:${id}`, fn);
    }
    follow(record, signal) {
        const existing = this.inFlight.get(record.id);
        if (existing && !existing.abandoned && existing.record.key === record.key)
            return existing.join(signal);
        const flight = new Flight(record, (s) => this.run(record, s));
        this.inFlight.set(record.id, flight);
        flight.done.finally(() => {
            if (this.inFlight.get(record.id) === flight)
                this.inFlight.delete(record.id);
        }).catch(() => { });
        return flight.join(signal);
    }
    emit(e) {
        try {
            this.options.onEvent?.(e);
        }
        catch {
            // A listener's failure must not change the outcome.
        }
    }
    /** The loop: submit (or poll once an operation id is known) until final. */
    async run(record, signal) {
        const base = { intent: record.id, key: record.key };
        let attempt = 0;
        let lastReason = "";
        for (;;) {
            if (signal.aborted)
                throw this.aborted(record, signal);
            const polling = record.operationId !== undefined;
            let outcome;
            try {
                outcome = polling ? await this.poll(record, attempt, signal) : await this.submit(record, attempt, signal);
            }
            catch (e) {
                if (signal.aborted)
                    throw this.aborted(record, signal);
                outcome = { kind: "retry", reason: `network: ${describe(e)}` };
            }
            if (outcome.kind === "final") {
                await this.store.delete(record.id, record.key);
                const result = { ...outcome.result, operationId: record.operationId, key: record.key, intent: record.id };
                this.emit({ type: "final", ...base, status: result.status, replayed: result.replayed, operationId: record.operationId });
                return result;
            }
            if (outcome.kind === "error") {
                if (outcome.forget)
                    await this.store.delete(record.id, record.key);
                this.emit({ type: "error", ...base, error: outcome.error });
                throw outcome.error;
            }
            if (outcome.kind === "progress") {
                // A 202 or an unfinished operation: wait again at once, no retry spent.
                attempt = 0;
                continue;
            }
            lastReason = outcome.reason;
            attempt += 1;
            if (attempt >= this.maxAttempts || !this.takeRetry()) {
                const error = new IdemqError({
                    type: OUTCOME_UNKNOWN,
                    message: `No final answer for ${record.id} after ${attempt} attempt(s) (${lastReason}); the operation may still happen: resume() it later with the same key.`,
                    retryable: true,
                    outcomeUnknown: true,
                    intent: record.id,
                    key: record.key,
                    operationId: record.operationId,
                });
                this.emit({ type: "error", ...base, error });
                throw error;
            }
            const jitter = this.random() * Math.min(this.capMs, this.baseMs * 2 ** (attempt - 1));
            const delayMs = Math.max(jitter, outcome.notBeforeMs ?? 0);
            this.emit({ type: "retry", ...base, attempt, delayMs, reason: outcome.reason });
            await sleep(delayMs, signal).catch(() => {
                throw this.aborted(record, signal);
            });
        }
    }
    aborted(record, signal) {
        return new IdemqError({
            type: ABORTED,
            message: `Stopped waiting for ${record.id}; the operation goes on (resume() follows it).`,
            retryable: true,
            outcomeUnknown: true,
            intent: record.id,
            key: record.key,
            operationId: record.operationId,
            cause: signal.reason,
        });
    }
    takeRetry() {
        const now = Date.now();
        this.budget = Math.min(this.budgetMax, this.budget + ((now - this.budgetAt) / 1000) * this.budgetPerSecond);
        this.budgetAt = now;
        if (this.budget < 1)
            return false;
        this.budget -= 1;
        return true;
    }
    async headers(extra) {
        const token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
        return { Authorization: `Bearer ${token}`, Prefer: `wait=${this.waitSeconds}`, ...extra };
    }
    async request(url, init, signal) {
        // The server holds the answer up to the wait; past that plus slack, the
        // request is lost (a dead connection) and is sent again.
        const timeout = new AbortController();
        const timer = setTimeout(() => timeout.abort(new Error("timed out")), this.waitSeconds * 1000 + this.timeoutSlackMs);
        const onAbort = () => timeout.abort(signal.reason);
        signal.addEventListener("abort", onAbort, { once: true });
        try {
            return await this.fetchFn(url, { ...init, signal: timeout.signal });
        }
        finally {
            clearTimeout(timer);
            signal.removeEventListener("abort", onAbort);
        }
    }
    async submit(record, attempt, signal) {
        this.emit({ type: "send", intent: record.id, key: record.key, attempt, method: record.method, path: record.path });
        const res = await this.request(this.baseUrl + record.path, {
            method: record.method,
            headers: await this.headers({ "Idempotency-Key": record.key, "Content-Type": "application/json" }),
            body: JSON.stringify(record.body),
        }, signal);
        const text = await res.text();
        const replayed = res.headers.get("idempotent-replayed") === "true";
        if (res.status === 202) {
            const op = parseJson(text);
            const id = op?.id ?? res.headers.get("location")?.split("/").pop();
            if (id) {
                record.operationId = id;
                await this.store.put(record);
                this.emit({ type: "operation", intent: record.id, key: record.key, operationId: id, status: op?.status ?? "queued" });
                return { kind: "progress" };
            }
            return { kind: "retry", reason: "202 without an operation" };
        }
        // The server's stored answers (first or replayed) come from the same path
        // that marks them: a replay says Idempotent-Replayed, a waited first
        // answer says Preference-Applied. Refusals (400, 401, 413, 422, 429, 503)
        // say neither, and nothing was recorded for them. Any other 2xx is final.
        const stored = res.ok || replayed || res.headers.has("preference-applied");
        if (stored)
            return this.finalOf(record, res.status, text, replayed);
        return this.refusal(record, res, text);
    }
    async poll(record, attempt, signal) {
        const opId = record.operationId;
        this.emit({ type: "poll", intent: record.id, key: record.key, operationId: opId, attempt });
        const res = await this.request(`${this.baseUrl}/operations/${enc(opId)}`, { method: "GET", headers: await this.headers({}) }, signal);
        const text = await res.text();
        if (res.status === 200) {
            const op = parseJson(text);
            if (!op)
                return { kind: "retry", reason: "unreadable operation" };
            this.emit({ type: "operation", intent: record.id, key: record.key, operationId: opId, status: op.status });
            if (op.response)
                return this.finalOf(record, op.response.status, op.response.body, true);
            return { kind: "progress" };
        }
        return this.refusal(record, res, text);
    }
    finalOf(record, status, body, replayed) {
        const parsed = typeof body === "string" ? parseJson(body) ?? body : body;
        if (status < 400)
            return { kind: "final", result: { status, body: parsed, replayed } };
        const problem = asProblem(parsed);
        return {
            kind: "error",
            forget: true,
            error: new IdemqError({
                type: problem?.type ?? "about:blank",
                message: problem?.detail ?? problem?.title ?? `HTTP ${status}`,
                status,
                problem,
                // The stored answer: the same key gets it again, whatever we do.
                retryable: false,
                stored: true,
                intent: record.id,
                key: record.key,
                operationId: record.operationId,
            }),
        };
    }
    refusal(record, res, text) {
        const status = res.status;
        const problem = asProblem(parseJson(text));
        if (status === 429 || status === 503 || status >= 500) {
            return { kind: "retry", reason: `${status} ${problem?.type ?? ""}`.trim(), notBeforeMs: retryAfterMs(res.headers) };
        }
        const error = new IdemqError({
            type: problem?.type ?? "about:blank",
            message: problem?.detail ?? problem?.title ?? `HTTP ${status}`,
            status,
            problem,
            retryable: false,
            intent: record.id,
            key: record.key,
            operationId: record.operationId,
        });
        if (status === 422 && problem?.type === KEY_REUSED) {
            // Our fingerprint said "same request" and the server's did not: a bug
            // in the caller or this client, never a condition to retry.
            console.error(`idemq: ${KEY_REUSED} for intent ${record.id} (key ${record.key})`, problem);
        }
        // 401 or a 404 on the poll may follow an attempt that was recorded: the
        // record stays for resume(). The others refuse the request itself.
        const forget = status === 400 || status === 413 || status === 422;
        return { kind: "error", error, forget };
    }
}
/** One run of an intent, shared by every caller that joins it. */
class Flight {
    record;
    done;
    controller = new AbortController();
    waiting = 0;
    constructor(record, run) {
        this.record = record;
        this.done = run(this.controller.signal);
    }
    /** Every caller stopped waiting: the run is stopping. */
    get abandoned() {
        return this.controller.signal.aborted;
    }
    /** The run's answer, or this caller's abort (the run stops only when every caller left). */
    join(signal) {
        if (!signal) {
            this.waiting += 1;
            return this.done;
        }
        if (signal.aborted)
            return Promise.reject(this.abortError(signal));
        this.waiting += 1;
        return new Promise((resolve, reject) => {
            const onAbort = () => {
                this.waiting -= 1;
                if (this.waiting === 0)
                    this.controller.abort(signal.reason);
                reject(this.abortError(signal));
            };
            signal.addEventListener("abort", onAbort, { once: true });
            this.done.then((r) => {
                signal.removeEventListener("abort", onAbort);
                resolve(r);
            }, (e) => {
                signal.removeEventListener("abort", onAbort);
                reject(e);
            });
        });
    }
    abortError(signal) {
        return new IdemqError({
            type: ABORTED,
            message: `Stopped waiting for ${this.record.id}; the operation goes on (resume() follows it).`,
            retryable: true,
            outcomeUnknown: true,
            intent: this.record.id,
            key: this.record.key,
            operationId: this.record.operationId,
            cause: signal.reason,
        });
    }
}
export function intentId(intent) {
    return `${intent.action}:${intent.target}`;
}
function enc(s) {
    return encodeURIComponent(s);
}
function randomKey() {
    return globalThis.crypto.randomUUID();
}
/** SHA-256 (hex) of method, path and the body's canonical JSON. */
export async function fingerprintOf(method, path, body) {
    const data = new TextEncoder().encode(`${method.toUpperCase()} ${path}\n${canonicalJson(body)}`);
    const digest = await globalThis.crypto.subtle.digest("SHA-256", data);
    return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}
/** JSON with object keys sorted, so key order does not make a new intent. */
export function canonicalJson(v) {
    if (Array.isArray(v))
        return `[${v.map(canonicalJson).join(",")}]`;
    if (v !== null && typeof v === "object") {
        const entries = Object.entries(v)
            .filter(([, x]) => x !== undefined)
            .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
        return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${canonicalJson(x)}`).join(",")}}`;
    }
    return JSON.stringify(v) ?? "null";
}
function parseJson(text) {
    try {
        return JSON.parse(text);
    }
    catch {
        return undefined;
    }
}
function asProblem(v) {
    return v !== null && typeof v === "object" && typeof v.type === "string"
        ? v
        : undefined;
}
function describe(e) {
    return e instanceof Error ? e.message : String(e);
}
/**
 * When the server allows the next try: `Retry-After` (seconds or a date), and
 * the `RateLimit` field's `t` when its remaining `r` is 0; the later of both.
 */
export function retryAfterMs(headers) {
    let ms;
    const ra = headers.get("retry-after");
    if (ra !== null) {
        const secs = Number(ra.trim());
        if (Number.isFinite(secs))
            ms = Math.max(0, secs * 1000);
        else {
            const at = Date.parse(ra);
            if (!Number.isNaN(at))
                ms = Math.max(0, at - Date.now());
        }
    }
    const rl = headers.get("ratelimit");
    if (rl !== null) {
        const r = /;\s*r=(\d+)/.exec(rl);
        const t = /;\s*t=(\d+)/.exec(rl);
        if (r && t && Number(r[1]) === 0)
            ms = Math.max(ms ?? 0, Number(t[1]) * 1000);
    }
    return ms;
}
function sleep(ms, signal) {
    return new Promise((resolve, reject) => {
        if (signal.aborted)
            return reject(signal.reason);
        const onAbort = () => {
            clearTimeout(timer);
            reject(signal.reason);
        };
        const timer = setTimeout(() => {
            signal.removeEventListener("abort", onAbort);
            resolve();
        }, ms);
        signal.addEventListener("abort", onAbort, { once: true });
    });
}
