// Generates src/openapi.ts from idemq's /openapi.json, then `npm run gen:types` builds dist/.
//   npm run gen:types                                  # starts `cargo run -- dev` itself (port 0), stops it after
//   IDEMQ_URL=http://127.0.0.1:3000 npm run gen:types  # or reads a running server
// The same function is used by test/generated.test.mjs to check that the
// committed types are what the current server serves.
import { spawn } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import openapiTS, { astToString } from "openapi-typescript";

export const TYPES_PATH = fileURLToPath(new URL("../src/openapi.ts", import.meta.url));

const HEADER =
  "// Generated from idemq's /openapi.json by `npm run gen:types` (openapi-typescript).\n" +
  "// Do not edit: a test fails when this differs from what the server serves.\n";

/** The file's text for the document served at `baseUrl`. */
export async function generate(baseUrl) {
  const res = await fetch(`${baseUrl.replace(/\/$/, "")}/openapi.json`);
  if (!res.ok) throw new Error(`GET /openapi.json: ${res.status}`);
  const doc = await res.json();
  // The types need no operation names: operations are typed inline under
  // their paths, so renaming a handler's operationId changes no type.
  for (const item of Object.values(doc.paths ?? {})) {
    for (const op of Object.values(item)) if (op && typeof op === "object") delete op.operationId;
  }
  const ast = await openapiTS(doc, { alphabetize: true });
  return HEADER + astToString(ast);
}

/** `cargo run -- dev` from the repository root on free ports; resolves with its URL and a stop(). */
function startDev() {
  const root = fileURLToPath(new URL("../../..", import.meta.url));
  const child = spawn("cargo", ["run", "--quiet", "--", "dev"], {
    cwd: root,
    env: { ...process.env, IDEMQ_API_ADDR: "127.0.0.1:0", IDEMQ_OPS_ADDR: "127.0.0.1:0" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  return new Promise((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const m = /api listening on (http:\/\/[0-9.:]+)/.exec(out);
      if (m) resolve({ url: m[1], stop: () => (child.kill("SIGINT"), exited) });
    });
    exited.then((code) => reject(new Error(`idemq dev exited (${code}) before listening:\n${out}`)));
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const dev = process.env.IDEMQ_URL ? undefined : await startDev();
  const url = process.env.IDEMQ_URL ?? dev.url;
  try {
    await writeFile(TYPES_PATH, await generate(url));
    console.log(`wrote ${TYPES_PATH} from ${url}/openapi.json`);
  } finally {
    await dev?.stop();
  }
}
