#!/usr/bin/env node
// @ts-check
/**
 * The demo's server: the page, its compiled module and the SDK's built ESM, and the inference API
 * (/v1/*, /healthz, /readyz) forwarded to `--api`, so the page talks to its own origin and the
 * inference server needs no CORS. No dependencies: Node's http, https, fs and crypto.
 *
 *   node sdk/typescript/demo/serve.mjs --api http://127.0.0.1:7860 [--port 8080] [--host 127.0.0.1]
 *
 * It prints one line, `demo: http://HOST:PORT/ (inference server API)`, once it listens (`--port 0`
 * picks a free port). Requests the browser abandons are abandoned upstream too, so the inference
 * server stops their generation.
 */

import { createHash } from "node:crypto";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const DEMO = dirname(fileURLToPath(import.meta.url));
const SDK_DIST = join(DEMO, "..", "dist");
const DEMO_DIST = join(DEMO, "dist");
const USAGE = "usage: node sdk/typescript/demo/serve.mjs --api http://127.0.0.1:7860 [--port 8080] [--host 127.0.0.1]";
const DEFAULTS = { api: "http://127.0.0.1:7860", port: "8080", host: "127.0.0.1" };
/** What goes to the inference server: its API, and the probes the SDK and the page make. */
const FORWARDED = /^\/(v1\/|healthz(\?|$)|readyz(\?|$))/;
/** Headers that belong to one connection, not to the request (RFC 9110, section 7.6.1). */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "host",
]);

/**
 * Fails with one line: the value at fault and what is allowed.
 * @param {string} message
 * @returns {never}
 */
function die(message) {
  process.stderr.write(`demo: ${message}\n`);
  process.exit(2);
}

/**
 * --api, --port and --host from argv (`--name value` or `--name=value`).
 * @param {string[]} argv
 * @returns {{ api: URL, port: number, host: string }}
 */
function parseArgs(argv) {
  /** @type {Record<string, string>} */
  const given = { ...DEFAULTS };
  for (let i = 0; i < argv.length; i++) {
    const arg = /** @type {string} */ (argv[i]);
    if (arg === "-h" || arg === "--help") {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    }
    const match = /^--(api|port|host)(?:=(.*))?$/.exec(arg);
    if (!match) die(`unknown argument ${JSON.stringify(arg)}; allowed: --api, --port, --host (${USAGE})`);
    const name = /** @type {string} */ (match[1]);
    const value = match[2] ?? argv[++i];
    if (value === undefined) die(`--${name} needs a value`);
    given[name] = value;
  }
  let api;
  try {
    api = new URL(/** @type {string} */ (given["api"]));
  } catch {
    die(`--api ${JSON.stringify(given["api"])} is not a URL; allowed: http(s)://host:port`);
  }
  if (!["http:", "https:"].includes(api.protocol) || (api.pathname !== "/" && api.pathname !== "") || api.search || api.hash || api.username) {
    die(`--api ${JSON.stringify(given["api"])}: allowed http(s)://host:port with no path, query or credentials`);
  }
  const port = Number(given["port"]);
  if (!/^\d+$/.test(/** @type {string} */ (given["port"])) || port > 65535) {
    die(`--port ${JSON.stringify(given["port"])}: allowed an integer from 0 (any free port) to 65535`);
  }
  return { api, port, host: /** @type {string} */ (given["host"]) };
}

/**
 * The sha256 source of every inline script (the import map), for the Content-Security-Policy.
 * @param {string} html
 * @returns {string}
 */
function inlineScriptHashes(html) {
  return [...html.matchAll(/<script[^>]*>([\s\S]*?)<\/script>/g)]
    .filter((m) => (m[1] ?? "").trim() !== "")
    .map((m) => `'sha256-${createHash("sha256").update(m[1] ?? "").digest("base64")}'`)
    .join(" ");
}

/**
 * The static files the page needs, read once: index.html, app.js and the SDK's browser modules.
 * @returns {Map<string, { body: Buffer, type: string }>}
 */
function loadFiles() {
  for (const [path, build] of [
    [join(SDK_DIST, "index.js"), "make sdk"],
    [join(DEMO_DIST, "app.js"), "make sdk"],
  ]) {
    if (!existsSync(/** @type {string} */ (path))) die(`${path} is missing: run \`${build}\` first`);
  }
  const js = "text/javascript; charset=utf-8";
  /** @type {Map<string, { body: Buffer, type: string }>} */
  const files = new Map();
  const page = readFileSync(join(DEMO, "index.html"));
  files.set("/", { body: page, type: "text/html; charset=utf-8" });
  files.set("/index.html", { body: page, type: "text/html; charset=utf-8" });
  files.set("/app.js", { body: readFileSync(join(DEMO_DIST, "app.js")), type: js });
  for (const name of readdirSync(SDK_DIST)) {
    // node.js is the Node-only transport; the page never imports it.
    if (/^[a-z][a-z0-9-]*\.js$/.test(name) && name !== "node.js") {
      files.set(`/sdk/${name}`, { body: readFileSync(join(SDK_DIST, name)), type: js });
    }
  }
  return files;
}

/**
 * Sends a one-line JSON error, as the inference server does.
 * @param {http.ServerResponse} res
 * @param {number} status
 * @param {string} message
 */
function fail(res, status, message) {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.writeHead(status, { "Content-Type": "application/json", "Cache-Control": "no-store" });
  res.end(JSON.stringify({ error: message, request_id: null }));
}

/**
 * The request's headers for the next hop: hop-by-hop ones dropped.
 * @param {http.IncomingHttpHeaders} headers
 * @returns {http.OutgoingHttpHeaders}
 */
function forwardable(headers) {
  return Object.fromEntries(Object.entries(headers).filter(([name]) => !HOP_BY_HOP.has(name.toLowerCase())));
}

/**
 * Forwards one request to the inference server and streams its answer back.
 * @param {URL} api
 * @param {http.IncomingMessage} req
 * @param {http.ServerResponse} res
 */
function forward(api, req, res) {
  const client = api.protocol === "https:" ? https : http;
  const upstream = client.request(
    {
      protocol: api.protocol,
      hostname: api.hostname,
      port: api.port || (api.protocol === "https:" ? 443 : 80),
      method: req.method,
      path: req.url,
      headers: { ...forwardable(req.headers), host: api.host },
    },
    (answer) => {
      res.writeHead(answer.statusCode ?? 502, forwardable(answer.headers));
      answer.on("error", () => res.destroy()); // the inference server went away mid-answer
      answer.pipe(res);
    },
  );
  upstream.on("error", (err) => {
    const code = /** @type {NodeJS.ErrnoException} */ (err).code ?? err.message;
    if (res.writableEnded || res.destroyed) return; // the browser left first
    process.stderr.write(`demo: ${req.method} ${req.url}: inference server ${api.origin} unreachable (${code})\n`);
    fail(res, 502, `inference server ${api.origin} unreachable (${code}); start it or pass --api`);
  });
  // The browser gave up (cancel, deadline, closed tab): drop the request upstream as well.
  res.on("close", () => {
    if (!res.writableFinished) upstream.destroy();
  });
  req.pipe(upstream);
}

function main() {
  const { api, port, host } = parseArgs(process.argv.slice(2));
  const files = loadFiles();
  const page = /** @type {{ body: Buffer }} */ (files.get("/")).body.toString("utf8");
  const policy = [
    "default-src 'self'",
    `script-src 'self' ${inlineScriptHashes(page)}`,
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' blob: data:",
    "media-src 'self' blob: mediastream:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
  ].join("; ");
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0] ?? "/";
    if (FORWARDED.test(req.url ?? "")) {
      forward(api, req, res);
      return;
    }
    const file = files.get(path);
    if (req.method !== "GET" && req.method !== "HEAD") {
      fail(res, 405, `${req.method} ${path}: allowed GET or HEAD (POST goes to /v1/*)`);
    } else if (file) {
      res.writeHead(200, {
        "Content-Type": file.type,
        "Content-Length": file.body.length,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": policy,
      });
      res.end(req.method === "HEAD" ? undefined : file.body);
    } else if (path === "/favicon.ico") {
      res.writeHead(204).end();
    } else {
      fail(res, 404, `${path}: not found; this server serves /, /app.js, /sdk/*.js and forwards /v1/*, /healthz, /readyz`);
    }
  });
  server.on("error", (err) => die(`cannot listen on ${host}:${port}: ${err.message}`));
  server.listen(port, host, () => {
    const address = /** @type {import("node:net").AddressInfo} */ (server.address());
    const shown = address.family === "IPv6" ? `[${address.address}]` : address.address;
    process.stdout.write(`demo: http://${shown}:${address.port}/ (inference server ${api.origin})\n`);
  });
  for (const signal of /** @type {const} */ (["SIGINT", "SIGTERM"])) {
    process.on(signal, () => {
      server.close();
      server.closeAllConnections();
      process.exit(0);
    });
  }
}

main();
