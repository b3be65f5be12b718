// Builds the phone app (dist/) and the Node test bundles (dist-test/) with esbuild.
// Reproducible: no timestamps, no absolute paths, sorted inputs, pinned versions
// (package-lock.json); the app bundle's SHA-256 is printed so IT can pin and publish it
// (docs/SECURITY.md "Who serves the phone app").
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, writeFileSync, readdirSync, copyFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
process.chdir(here);

const common = {
  bundle: true,
  minify: false,
  sourcemap: false,
  legalComments: "none",
  logLevel: "warning",
  charset: "utf8",
  // libsodium.js probes for Node modules it never needs in a browser.
  external: [],
};

// 1. Node test bundles: the vector runner and the cross-implementation driver.
rmSync("dist-test", { recursive: true, force: true });
await build({
  ...common,
  entryPoints: ["test/vectors.ts", "test/driver.ts"].filter((p) => existsSync(p)),
  outdir: "dist-test",
  platform: "node",
  format: "esm",
  outExtension: { ".js": ".mjs" },
  target: "node18",
  // CommonJS's require for libsodium.js, and WebCrypto as a global on Node 18 (global from 19).
  banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url); globalThis.crypto ??= require('node:crypto').webcrypto;" },
});

// 2. The app (only once its sources exist).
if (existsSync("src/app/main.ts")) {
  rmSync("dist", { recursive: true, force: true });
  mkdirSync("dist", { recursive: true });
  await build({
    ...common,
    entryPoints: { app: "src/app/main.ts", worker: "src/app/worker.ts", sw: "src/app/sw.ts", "sso-callback": "src/app/sso-callback.ts" },
    outdir: "dist",
    platform: "browser",
    format: "esm",
    target: ["chrome110", "safari16"],
    minify: true,
  });
  for (const f of readdirSync("static").sort()) copyFileSync(join("static", f), join("dist", f));
  // Subresource Integrity (W3C SRI §3.5): sha384 of each script the page loads.
  const sri = (f) => "sha384-" + createHash("sha384").update(readFileSync(join("dist", f))).digest("base64");
  for (const page of ["index.html", "sso-callback.html"]) {
    const html = readFileSync(join("dist", page), "utf-8")
      .replaceAll("{{SRI_APP}}", sri("app.js"))
      .replaceAll("{{SRI_CALLBACK}}", sri("sso-callback.js"))
      .replaceAll("{{SRI_CSS}}", sri("app.css"));
    writeFileSync(join("dist", page), html);
  }
  const files = readdirSync("dist").filter((f) => f !== "MANIFEST.sha256").sort();
  const lines = files.map((f) => `${createHash("sha256").update(readFileSync(join("dist", f))).digest("hex")}  ${f}`);
  writeFileSync("dist/MANIFEST.sha256", lines.join("\n") + "\n");
  const bundle = createHash("sha256").update(lines.join("\n") + "\n").digest("hex");
  console.log(`phone app bundle sha256 ${bundle}`);
}
