/** What the SDK's tests share: the repository's paths, the Python helpers, and a SigV4 signer for tests. */

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHash, createHmac } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import type { Signer } from "@edge-diffusion/client";

/** The repository root: this file runs from sdk/typescript/dist-test/. */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const PYTHON = process.env["EDGE_DIFFUSION_PYTHON"] ?? join(ROOT, ".venv", "bin", "python");
export const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

export function scratch(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `edge-diffusion-sdk-${prefix}-`));
}

/** `python -m tests.clients.helper tls DIR`: the scenarios' certificates, made by tests/tls_ca.py. */
export function makeTls(directory: string): void {
  const done = spawnSync(PYTHON, ["-m", "tests.clients.helper", "tls", directory], { cwd: ROOT, encoding: "utf8" });
  if (done.status !== 0) throw new Error(`tests.clients.helper tls failed: ${done.stderr}`);
}

/** A Python helper that prints one JSON line when ready and serves until killed. */
export async function startHelper(args: string[]): Promise<{ process: ChildProcess; ready: Record<string, unknown> }> {
  const child = spawn(PYTHON, ["-m", "tests.clients.helper", ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout! });
  const ready = await new Promise<Record<string, unknown>>((resolveLine, reject) => {
    child.once("exit", (code) => reject(new Error(`tests.clients.helper ${args[0]} exited ${code} before it was ready`)));
    lines.once("line", (line) => resolveLine(JSON.parse(line) as Record<string, unknown>));
  });
  return { process: child, ready };
}

const hex = (data: string | Buffer): string => createHash("sha256").update(data).digest("hex");
const hmac = (key: string | Buffer, data: string): Buffer => createHmac("sha256", key).update(data).digest();
const rfc3986 = (text: string): string =>
  encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

/** SigV4 (AWS4-HMAC-SHA256) for GET requests, written out for the tests; an app passes its own (README). */
export function testSigner(credentials: { accessKeyId: string; secretAccessKey: string; sessionToken?: string }): Signer {
  return async ({ method, url, region, service }) => {
    const target = new URL(url);
    const amzDate = new Date().toISOString().replace(/[-:]|\.\d{3}/g, "");
    const date = amzDate.slice(0, 8);
    const headers: Record<string, string> = { host: target.host, "x-amz-date": amzDate };
    if (credentials.sessionToken) headers["x-amz-security-token"] = credentials.sessionToken;
    const names = Object.keys(headers).sort();
    const canonicalHeaders = names.map((name) => `${name}:${headers[name]!.trim()}\n`).join("");
    const query = target.search.slice(1);
    const pairs = query ? query.split("&").map((pair) => pair.split("=", 2) as [string, string?]) : [];
    pairs.sort(([a, av], [b, bv]) => (a < b ? -1 : a > b ? 1 : (av ?? "") < (bv ?? "") ? -1 : 1));
    const canonicalQuery = pairs.map(([key, value]) => `${key}=${value ?? ""}`).join("&");
    const path = target.pathname.split("/").map((part) => rfc3986(decodeURIComponent(part))).join("/");
    const canonical = [method, path, canonicalQuery, canonicalHeaders, names.join(";"), hex("")].join("\n");
    const scope = `${date}/${region}/${service}/aws4_request`;
    const toSign = ["AWS4-HMAC-SHA256", amzDate, scope, hex(canonical)].join("\n");
    let key = hmac(`AWS4${credentials.secretAccessKey}`, date);
    for (const part of [region, service, "aws4_request"]) key = hmac(key, part);
    const signature = createHmac("sha256", key).update(toSign).digest("hex");
    const signed: Record<string, string> = {
      Authorization: `AWS4-HMAC-SHA256 Credential=${credentials.accessKeyId}/${scope}, SignedHeaders=${names.join(";")}, Signature=${signature}`,
      "X-Amz-Date": amzDate,
    };
    if (credentials.sessionToken) signed["X-Amz-Security-Token"] = credentials.sessionToken;
    return signed;
  };
}
