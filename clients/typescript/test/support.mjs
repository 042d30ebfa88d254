// Real idemq processes for the Node tests. The Rust test (tests/it/client_ts.rs)
// passes IDEMQ_BIN (the built binary), DATABASE_URL (a fresh migrated and
// seeded database), IDEMQ_TOKEN and PSQL.
import { spawn, execFile } from "node:child_process";
import { promisify } from "node:util";

export const BIN = required("IDEMQ_BIN");
export const DATABASE_URL = required("DATABASE_URL");

function required(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run these tests through \`cargo test --test it client_ts::\``);
  return v;
}

/** Starts `idemq <command>`; resolves when it printed the line matching `ready`. */
const children = new Set();
// A test process that dies leaves no idemq behind.
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

function startProcess(args, env, ready, deadlineMs = 30_000) {
  const child = spawn(BIN, args, {
    env: { ...process.env, DATABASE_URL, IDEMQ_LOG_FORMAT: "json", RUST_LOG: "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);
  child.once("exit", () => children.delete(child));
  let output = "";
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  const found = new Promise((resolve, reject) => {
    if (!ready) return resolve([]);
    const timer = setTimeout(() => reject(new Error(`idemq ${args[0]} not ready in ${deadlineMs} ms:\n${output}`)), deadlineMs);
    const onData = (chunk) => {
      output += chunk;
      const m = ready.exec(output);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", (c) => (output += c));
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`idemq ${args[0]} exited (${code ?? signal}) before it was ready:\n${output}`));
    });
  });
  return { child, exited, found, output: () => output };
}

async function stop(p, signal = "SIGTERM") {
  if (p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill(signal);
  await p.exited;
}

/** `idemq api` on `port` (0: any); mutating-request limit raised unless `env` says otherwise. */
export async function startApi(env = {}, port = 0) {
  const p = startProcess(
    ["api"],
    { IDEMQ_API_ADDR: `127.0.0.1:${port}`, IDEMQ_RATE_LIMIT_SENSITIVE: "10000/min", IDEMQ_OPS_TOKEN: "", ...env },
    /api listening on (http:\/\/[0-9.:]+)/,
  );
  const m = await p.found;
  const url = m[1];
  return { url, port: Number(new URL(url).port), stop: (signal) => stop(p, signal), output: p.output };
}

/** `idemq worker` (its readiness needs no wait: jobs queue until it polls). */
export async function startWorker(env = {}) {
  const p = startProcess(
    ["worker"],
    { IDEMQ_QUEUE_POLL_INTERVAL: "100ms", IDEMQ_WORKER_LEASE: "2s", IDEMQ_CLEANUP_ENABLED: "false", ...env },
    null,
  );
  await p.found;
  return { stop: (signal) => stop(p, signal), output: p.output };
}

/** `idemq dev` on the test's database, port 0; its printed URL and token. */
export async function startDev(env = {}) {
  const p = startProcess(
    ["dev"],
    {
      IDEMQ_API_ADDR: "127.0.0.1:0",
      IDEMQ_OPS_ADDR: "127.0.0.1:0",
      IDEMQ_RATE_LIMIT_SENSITIVE: "10000/min",
      IDEMQ_QUEUE_POLL_INTERVAL: "100ms",
      ...env,
    },
    /token\s+(idq_[0-9a-f]+)[\s\S]*api listening on (http:\/\/[0-9.:]+)/,
    60_000,
  );
  const m = await p.found;
  return { token: m[1], url: m[2], stop: (signal) => stop(p, signal), output: p.output };
}

const execFileP = promisify(execFile);

/** One value from the test database (psql, unaligned, tuples only). */
export async function sql(query) {
  const psql = process.env.PSQL || "psql";
  const { stdout } = await execFileP(psql, ["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", DATABASE_URL, "-c", query]);
  return stdout.trim();
}

export function quote(s) {
  return `'${String(s).replaceAll("'", "''")}'`;
}

/** Awaits `check()` truthy, polling, until the deadline. */
export async function until(check, what, deadlineMs = 20_000) {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A fetch that records every request (method, url, key, status, time). */
export function recordingFetch(inner = fetch) {
  const log = [];
  const f = async (input, init = {}) => {
    const headers = new Headers(init.headers);
    const entry = {
      method: init.method ?? "GET",
      url: String(input),
      key: headers.get("idempotency-key"),
      body: init.body,
      at: Date.now(),
    };
    log.push(entry);
    try {
      const res = await inner(input, init);
      entry.status = res.status;
      return res;
    } catch (e) {
      entry.error = String(e);
      throw e;
    }
  };
  f.log = log;
  return f;
}
