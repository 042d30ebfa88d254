/**
 * @idemq/client: the client half of idemq's idempotency contract.
 *
 * - One Idempotency-Key per user intent (an action and its target), created
 *   when the intent starts and stored, so a double click, a retry, a reload or
 *   a second tab reuses it.
 * - One call from submit to the final answer (`Prefer: wait`, then long-polls
 *   `GET /operations/{id}`).
 * - Retries with the same key and body, exponential backoff with full jitter,
 *   `Retry-After` honoured, a retry budget per client.
 * - Nothing lost silently: "outcome unknown" carries the key and operation id;
 *   `pending()` and `resume()` pick an unsettled intent up again.
 *
 * No runtime dependencies: fetch, AbortSignal, crypto.randomUUID, crypto.subtle.
 */
import type { components } from "./openapi.js";
export type Problem = components["schemas"]["Problem"];
export type Operation = components["schemas"]["OperationView"];
export type MarkPaidBody = components["schemas"]["MarkPaid"];
export type ApproveBody = components["schemas"]["Approve"];
export type RejectBody = components["schemas"]["Reject"];
export type RecordMeterReadingBody = components["schemas"]["RecordReading"];
export type InvoiceResponse = components["schemas"]["InvoiceBody"];
export type ApprovalResponse = components["schemas"]["ApprovalBody"];
export type ApplicationResponse = components["schemas"]["ApplicationBody"];
export type MeterReadingResponse = components["schemas"]["MeterReadingBody"];
/** The server's problem types (stable URIs) the client decides on. */
export declare const PROBLEM_BASE = "https://idemq.dev/problems/";
export declare const KEY_REUSED = "https://idemq.dev/problems/idempotency-key-reused";
/** Client-side conditions, in the same `type` field of {@link IdemqError}. */
export declare const OUTCOME_UNKNOWN = "urn:idemq:client:outcome-unknown";
export declare const ABORTED = "urn:idemq:client:aborted";
export declare const NETWORK_ERROR = "urn:idemq:client:network-error";
/** What the user means to do: an action on a target, e.g. pay invoice inv-7. */
export interface Intent {
    action: string;
    target: string;
}
/** A stored intent: everything needed to send it again after a reload. */
export interface IntentRecord {
    /** `action:target`. */
    id: string;
    key: string;
    /** SHA-256 over method, path and the canonical JSON body. */
    fingerprint: string;
    method: string;
    path: string;
    body: unknown;
    operationId?: string;
    /** Epoch milliseconds; the record is dropped after the key lifetime. */
    createdAt: number;
}
/** Where intents live: localStorage in a browser, memory elsewhere, or yours. */
export interface IntentStore {
    get(id: string): Promise<IntentRecord | undefined>;
    put(record: IntentRecord): Promise<void>;
    delete(id: string, key: string): Promise<void>;
    list(): Promise<IntentRecord[]>;
}
export declare class MemoryStore implements IntentStore {
    private readonly records;
    get(id: string): Promise<IntentRecord | undefined>;
    put(record: IntentRecord): Promise<void>;
    delete(id: string, key: string): Promise<void>;
    list(): Promise<IntentRecord[]>;
}
/** Shared by every tab of the origin: a reload or a second tab sees the key. */
export declare class LocalStorageStore implements IntentStore {
    private readonly storage;
    private readonly prefix;
    constructor(storage: Storage, prefix?: string);
    get(id: string): Promise<IntentRecord | undefined>;
    put(record: IntentRecord): Promise<void>;
    delete(id: string, key: string): Promise<void>;
    list(): Promise<IntentRecord[]>;
}
export declare function defaultStore(): IntentStore;
/** The final answer of an intent (a 2xx; stored 4xx/5xx reject). */
export interface Result<T = unknown> {
    status: number;
    body: T;
    /** Known when the server answered 202 at some point (else the answer came directly). */
    operationId?: string;
    /** The server said `Idempotent-Replayed: true` (or it came from polling). */
    replayed: boolean;
    key: string;
    intent: string;
}
/** The one error class: a refusal, a stored failure, or an unknown outcome. */
export declare class IdemqError extends Error {
    /** The problem's `type` (server URIs under https://idemq.dev/problems/) or a client `urn:`. */
    readonly type: string;
    readonly status?: number;
    readonly problem?: Problem;
    /** Whether calling again (resume) can help. */
    readonly retryable: boolean;
    /** The effect may or may not have happened: check later with `resume()`. */
    readonly outcomeUnknown: boolean;
    readonly intent?: string;
    readonly key?: string;
    readonly operationId?: string;
    /** True when this is the operation's stored final answer. */
    readonly stored: boolean;
    constructor(init: {
        type: string;
        message: string;
        status?: number;
        problem?: Problem;
        retryable: boolean;
        outcomeUnknown?: boolean;
        stored?: boolean;
        intent?: string;
        key?: string;
        operationId?: string;
        cause?: unknown;
    });
}
/** What the client is doing, for a page that shows it live. */
export type ClientEvent = {
    type: "send";
    intent: string;
    key: string;
    attempt: number;
    method: string;
    path: string;
} | {
    type: "poll";
    intent: string;
    key: string;
    operationId: string;
    attempt: number;
} | {
    type: "operation";
    intent: string;
    key: string;
    operationId: string;
    status: string;
} | {
    type: "retry";
    intent: string;
    key: string;
    attempt: number;
    delayMs: number;
    reason: string;
} | {
    type: "final";
    intent: string;
    key: string;
    status: number;
    replayed: boolean;
    operationId?: string;
} | {
    type: "error";
    intent: string;
    key: string;
    error: IdemqError;
};
export interface ClientOptions {
    /** e.g. `http://127.0.0.1:3000` (empty: the page's own origin). */
    baseUrl?: string;
    token: string | (() => string | Promise<string>);
    /** A fetch to use (a wrapper, a test double of the network). */
    fetch?: typeof fetch;
    store?: IntentStore;
    /** `Prefer: wait` seconds on submit and polls (1–30; default 10). */
    waitSeconds?: number;
    /** The server's IDEMQ_IDEMPOTENCY_TTL in ms (default 24 h): no key is kept longer. */
    keyTtlMs?: number;
    /** Attempts per call without progress before "outcome unknown" (default 8). */
    maxAttempts?: number;
    /** Backoff: full jitter over min(capMs, baseMs * 2^n) (defaults 200 ms, 10 s). */
    backoff?: {
        baseMs?: number;
        capMs?: number;
    };
    /** Retries the whole client may spend: a bucket of `max` refilled at `perSecond`. */
    retryBudget?: {
        max?: number;
        perSecond?: number;
    };
    /** Extra time over the wait before a request counts as timed out (default 10 s). */
    timeoutSlackMs?: number;
    /** Cross-tab locks (default: `navigator.locks` where the browser has it). */
    locks?: LockManager | null;
    onEvent?: (event: ClientEvent) => void;
    /** Default `Math.random`; tests may pin it. */
    random?: () => number;
}
export interface CallOptions {
    signal?: AbortSignal;
}
export interface SendRequest {
    intent: Intent;
    method: "POST" | "PATCH" | "PUT" | "DELETE";
    path: string;
    body: unknown;
}
export declare class IdemqClient {
    private readonly options;
    private readonly baseUrl;
    private readonly fetchFn;
    readonly store: IntentStore;
    private readonly waitSeconds;
    private readonly keyTtlMs;
    private readonly maxAttempts;
    private readonly baseMs;
    private readonly capMs;
    private readonly budgetMax;
    private readonly budgetPerSecond;
    private budget;
    private budgetAt;
    private readonly timeoutSlackMs;
    private readonly locks;
    private readonly random;
    private readonly inFlight;
    constructor(options: ClientOptions);
    /** Mark invoice `id` paid: intent `invoice.pay:<id>`. */
    payInvoice(id: string, body: MarkPaidBody, opts?: CallOptions): Promise<Result<{
        invoice: components["schemas"]["Invoice"];
    }>>;
    approveApplication(id: string, body?: ApproveBody, opts?: CallOptions): Promise<Result<{
        application: components["schemas"]["Application"];
        contract?: components["schemas"]["Contract"] | null;
    }>>;
    rejectApplication(id: string, body: RejectBody, opts?: CallOptions): Promise<Result<{
        application: components["schemas"]["Application"];
    }>>;
    /** One reading of a contract: another value is another intent. */
    recordMeterReading(body: RecordMeterReadingBody, opts?: CallOptions): Promise<Result<{
        meterReading: components["schemas"]["MeterReading"];
    }>>;
    /** Sends an intent and follows it to its final answer. */
    send<T = unknown>(req: SendRequest, opts?: CallOptions): Promise<Result<T>>;
    /** Intents still unsettled (also those of an earlier page load or another tab). */
    pending(): Promise<IntentRecord[]>;
    /** Follows a pending intent (by id `action:target` or its record) to its final answer. */
    resume<T = unknown>(intent: string | Intent | IntentRecord, opts?: CallOptions): Promise<Result<T>>;
    /** The run in flight for `id`, unless every caller left it (then it is let finish first). */
    private joinable;
    /** Drops expired records (the server has forgotten their keys). */
    private live;
    private withLock;
    private follow;
    private emit;
    /** The loop: submit (or poll once an operation id is known) until final. */
    private run;
    private aborted;
    private takeRetry;
    private headers;
    private request;
    private submit;
    private poll;
    private finalOf;
    private refusal;
}
export declare function intentId(intent: Intent): string;
/** SHA-256 (hex) of method, path and the body's canonical JSON. */
export declare function fingerprintOf(method: string, path: string, body: unknown): Promise<string>;
/** JSON with object keys sorted, so key order does not make a new intent. */
export declare function canonicalJson(v: unknown): string;
/**
 * When the server allows the next try: `Retry-After` (seconds or a date), and
 * the `RateLimit` field's `t` when its remaining `r` is 0; the later of both.
 */
export declare function retryAfterMs(headers: Headers): number | undefined;
