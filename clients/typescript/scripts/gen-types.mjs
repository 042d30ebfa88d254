// Generates src/openapi.ts from a running idemq's /openapi.json.
//   IDEMQ_URL=http://127.0.0.1:3000 npm run gen:types   (default: that URL)
// The same function is used by test/generated.test.mjs to check that the
// committed types are what the current server serves.
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
  // The server names several handlers `get` (operationId must be unique for
  // the generator's validator); the types need no operation names, so the
  // operations are typed inline under their paths.
  for (const item of Object.values(doc.paths ?? {})) {
    for (const op of Object.values(item)) if (op && typeof op === "object") delete op.operationId;
  }
  const ast = await openapiTS(doc, { alphabetize: true });
  return HEADER + astToString(ast);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const url = process.env.IDEMQ_URL ?? "http://127.0.0.1:3000";
  await writeFile(TYPES_PATH, await generate(url));
  console.log(`wrote ${TYPES_PATH} from ${url}/openapi.json`);
}
