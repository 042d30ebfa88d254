/**
 * The back-office demo page served by `idemq dev` at /demo/ (page/index.html).
 * Every action goes through the client; the page only renders what it does.
 */
import { IdemqClient, IdemqError } from "./index.js";
const INVOICES = Array.from({ length: 10 }, (_, i) => `inv-${i + 1}`);
const APPLICATIONS = ["app-1", "app-2", "app-3"];
const token = document.querySelector('meta[name="idemq-token"]')?.content || prompt("idemq token") || "";
const flaky = document.getElementById("flaky");
const logBox = document.getElementById("log");
function log(line) {
    const div = document.createElement("div");
    div.textContent = `${new Date().toISOString().slice(11, 23)} ${line}`;
    logBox.append(div);
    logBox.scrollTop = logBox.scrollHeight;
}
/** The flaky switch: the request is made, its answer is dropped (once). */
const flakyFetch = async (input, init) => {
    const res = await fetch(input, init);
    if (flaky.checked) {
        flaky.checked = false;
        await res.arrayBuffer();
        log(`flaky network: dropped the answer (${res.status}) to ${init?.method ?? "GET"} ${String(input)}`);
        throw new TypeError("network error (the flaky switch dropped the answer)");
    }
    return res;
};
const client = new IdemqClient({
    token,
    fetch: flakyFetch,
    backoff: { baseMs: 300, capMs: 3000 },
    onEvent: render,
});
/** The row an intent belongs to: `invoice.pay:inv-1` → the inv-1 row. */
function rowOf(intent) {
    const [action, target] = splitIntent(intent);
    if (action.startsWith("meter-reading"))
        return document.querySelector('[data-row="meter-reading"]');
    return document.querySelector(`[data-row="${CSS.escape(target)}"]`);
}
function splitIntent(intent) {
    const i = intent.indexOf(":");
    return [intent.slice(0, i), intent.slice(i + 1)];
}
function live(row, html, key, operationId) {
    const op = row.querySelector(".op");
    if (!op)
        return;
    op.innerHTML = html;
    if (key)
        op.dataset.key = key;
    if (operationId)
        op.dataset.operation = operationId;
}
function esc(s) {
    return s.replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
}
function render(e) {
    const row = rowOf(e.intent);
    const key = `key <code>${esc(e.key)}</code>`;
    switch (e.type) {
        case "send":
            log(`${e.method} ${e.path} Idempotency-Key: ${e.key} (attempt ${e.attempt + 1})`);
            if (row)
                live(row, `${key} · sending (attempt ${e.attempt + 1})`, e.key);
            break;
        case "poll":
            log(`GET /operations/${e.operationId} (waiting for the result)`);
            break;
        case "operation":
            log(`operation ${e.operationId}: ${e.status}`);
            if (row)
                live(row, `${key} · operation <code>${esc(e.operationId)}</code> · <b>${esc(e.status)}</b>`, e.key, e.operationId);
            break;
        case "retry":
            log(`retry ${e.attempt} in ${Math.round(e.delayMs)} ms with the same key (${e.reason})`);
            if (row)
                live(row, `${key} · retrying in ${Math.round(e.delayMs)} ms (${esc(e.reason)})`, e.key);
            break;
        case "final": {
            log(`final answer ${e.status}${e.replayed ? " (replayed)" : ""} for ${e.intent}`);
            const op = e.operationId ? ` · operation <code>${esc(e.operationId)}</code>` : "";
            if (row)
                live(row, `${key}${op} · <b>done</b>`, e.key, e.operationId);
            break;
        }
        case "error":
            log(`error for ${e.intent}: ${e.error.message}`);
            if (row)
                live(row, `${key} · <span class="error">${esc(e.error.type.split("/").pop() ?? "")}</span>`, e.key);
            break;
    }
}
function summary(r) {
    const b = r.body;
    const thing = b.invoice ?? b.application ?? b.meterReading;
    const what = thing?.status ?? (thing?.reading !== undefined ? `reading ${thing.reading}` : "");
    return `${r.status} ${what}`.trim();
}
/** Each click's answer, one line per click: a double click shows two equal lines. */
async function answer(rowEl, call, refresh) {
    const li = document.createElement("li");
    li.textContent = "…";
    rowEl?.querySelector(".answers")?.append(li);
    try {
        const r = await call;
        li.className = "ok";
        const replayed = r.replayed ? " (replayed)" : "";
        const op = r.operationId ? ` · ${r.operationId}` : "";
        li.textContent = `${summary(r)}${replayed}${op} · key ${r.key}`;
    }
    catch (e) {
        li.className = "error";
        if (e instanceof IdemqError) {
            li.textContent = `${e.status ?? ""} ${e.type.split("/").pop()} · key ${e.key ?? "?"}`.trim();
        }
        else {
            li.textContent = String(e);
        }
    }
    await refresh?.();
}
async function read(path) {
    const res = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
    return res.ok ? (await res.json()) : undefined;
}
function cell(text, cls = "") {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls)
        td.className = cls;
    return td;
}
function liveCells(tr) {
    const op = document.createElement("td");
    op.innerHTML = '<span class="op live"></span>';
    const answers = document.createElement("td");
    answers.innerHTML = '<ul class="answers"></ul>';
    tr.append(op, answers);
}
async function invoiceRow(id) {
    const tr = document.createElement("tr");
    tr.dataset.row = id;
    const pay = document.createElement("button");
    pay.textContent = "Pay invoice";
    pay.className = "pay";
    const buttons = document.createElement("td");
    buttons.append(pay);
    tr.append(cell(id), cell(""), cell("", "status"), buttons);
    liveCells(tr);
    const refresh = async () => {
        const inv = (await read(`/invoices/${id}`))?.invoice;
        tr.children[1].textContent = inv?.amountCents !== undefined ? `${(inv.amountCents / 100).toFixed(2)} ${inv.currency ?? ""}` : "";
        tr.children[2].textContent = inv?.status ?? "?";
    };
    // The click handler creates no key: the client keys the intent "pay inv-N".
    pay.addEventListener("click", () => void answer(tr, client.payInvoice(id, { paymentMethod: "card" }), refresh));
    document.querySelector("#invoices tbody")?.append(tr);
    await refresh();
    return refresh;
}
async function applicationRow(id) {
    const tr = document.createElement("tr");
    tr.dataset.row = id;
    const approve = document.createElement("button");
    approve.textContent = "Approve";
    approve.className = "approve";
    const reject = document.createElement("button");
    reject.textContent = "Reject";
    reject.className = "reject";
    const buttons = document.createElement("td");
    buttons.append(approve, " ", reject);
    tr.append(cell(id), cell(""), cell("", "status"), buttons);
    liveCells(tr);
    const refresh = async () => {
        const app = (await read(`/applications/${id}`))?.application;
        tr.children[1].textContent = app?.applicant ?? "";
        tr.children[2].textContent = app?.status ?? "?";
    };
    approve.addEventListener("click", () => void answer(tr, client.approveApplication(id, {}), refresh));
    reject.addEventListener("click", () => void answer(tr, client.rejectApplication(id, { reason: "Rejected from the back office" }), refresh));
    document.querySelector("#applications tbody")?.append(tr);
    await refresh();
    return refresh;
}
async function main() {
    const refreshers = new Map();
    for (const id of INVOICES)
        refreshers.set(id, await invoiceRow(id));
    for (const id of APPLICATIONS)
        refreshers.set(id, await applicationRow(id));
    const form = document.getElementById("reading");
    const readingRow = document.querySelector('[data-row="meter-reading"]');
    form.addEventListener("submit", (ev) => {
        ev.preventDefault();
        const data = new FormData(form);
        const body = { contractId: String(data.get("contractId")), reading: Number(data.get("reading")) };
        void answer(readingRow, client.recordMeterReading(body));
    });
    // Intents left unsettled by an earlier load (or another tab): follow them
    // instead of offering a fresh click that would start a new intent.
    const pending = await client.pending();
    const note = document.getElementById("pending-note");
    if (note && pending.length)
        note.textContent = `${pending.length} action(s) in progress from before: following them.`;
    for (const p of pending) {
        const row = rowOf(p.id);
        if (row)
            live(row, `key <code>${esc(p.key)}</code> · in progress (resumed after reload)`, p.key, p.operationId);
        void answer(row, client.resume(p), refreshers.get(splitIntent(p.id)[1]));
    }
    document.body.dataset.ready = "true";
}
void main();
