// The committed generated and built files are what the current sources give:
// src/openapi.ts from the running server's /openapi.json, dist/ from `tsc`.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { generate, TYPES_PATH } from "../scripts/gen-types.mjs";
import { startApi } from "./support.mjs";

const PACKAGE = fileURLToPath(new URL("..", import.meta.url));
let api;

before(async () => {
  api = await startApi();
});
after(async () => {
  await api?.stop();
});

test("the committed types are what the server serves at /openapi.json", async () => {
  const fresh = await generate(api.url);
  const committed = await readFile(TYPES_PATH, "utf8");
  assert.ok(
    fresh === committed,
    "clients/typescript/src/openapi.ts differs from the server's /openapi.json: " +
      "run `npm run gen:types` in clients/typescript (see README) and commit src/openapi.ts and dist/",
  );
});

test("the committed dist/ is a fresh build of src/", async () => {
  const out = await mkdtemp(join(tmpdir(), "idemq-client-build-"));
  try {
    await promisify(execFile)(join(PACKAGE, "node_modules/.bin/tsc"), ["-p", "tsconfig.json", "--outDir", out], {
      cwd: PACKAGE,
    });
    const built = (await readdir(out)).sort();
    const committed = (await readdir(join(PACKAGE, "dist"))).sort();
    assert.deepEqual(committed, built, "dist/ has other files than a build: run `npm run build`");
    for (const name of built) {
      const a = await readFile(join(out, name), "utf8");
      const b = await readFile(join(PACKAGE, "dist", name), "utf8");
      assert.ok(a === b, `dist/${name} differs from a fresh build: run \`npm run build\` in clients/typescript`);
    }
  } finally {
    await rm(out, { recursive: true, force: true });
  }
});
