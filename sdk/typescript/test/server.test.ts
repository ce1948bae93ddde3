/**
 * The SDK against the real inference server (`python -m runtime.server --model tiny`) on loopback:
 * two plain-http servers without auth, one behind a proxy that notices the POST so the test can kill
 * its server mid-request; and one with TLS (a private CA from tests/tls_ca.py) and token auth,
 * whose tokens come from the real token route (tests/clients/helper.py: the Lambda handler signing
 * with a moto KMS key, SigV4 checked by botocore).
 */

import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { EventEmitter, once } from "node:events";
import { readFileSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { EdgeDiffusionClient, NoEndpointError, RequestRejectedError, type ImageRequest } from "@edge-diffusion/client";
import { nodeTransport } from "@edge-diffusion/client/node";

import { PNG_MAGIC, PYTHON, ROOT, makeTls, scratch, startHelper, testSigner } from "./support.js";
import { LOOPBACK, freePort } from "./world.js";

const QUICK: ImageRequest = { prompt: "a cat", steps: 2, width: 64, height: 64, seed: 1 };
// Long enough (a few hundred ms on the tiny model) to be killed while it works.
const SLOW: ImageRequest = { prompt: "a lighthouse at dawn", steps: 60, width: 64, height: 64, seed: 2 };
const SERVER_NAME = "lz.test.example";
const JPEG_MAGIC = Buffer.from([0xff, 0xd8, 0xff]);
const children: ChildProcess[] = [];
const quiet = (): undefined => undefined;

function startServer(port: number, ...extra: string[]): ChildProcess {
  const args = ["-m", "runtime.server", "--model", "tiny", "--host", LOOPBACK, "--port", String(port)];
  args.push("--metrics-sink", "none", "--metrics-port", "0", "--no-ui", "--max-batch", "1", ...extra);
  const child = spawn(PYTHON, args, { cwd: ROOT, env: { ...process.env, HF_HUB_OFFLINE: "1" }, stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  child.stderr!.on("data", (chunk: Buffer) => (log = (log + chunk.toString()).slice(-4000)));
  Object.defineProperty(child, "log", { get: () => log });
  children.push(child);
  return child;
}

async function waitReady(url: string, child: ChildProcess, fetchImpl: (url: string) => Promise<Response> = (u) => fetch(u)): Promise<void> {
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`server exited ${child.exitCode}: ${(child as unknown as { log: string }).log}`);
    try {
      if ((await fetchImpl(`${url}/readyz`)).status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`${url} not ready after 120 s`);
}

/** A TCP proxy that emits "post" when a POST goes through it. */
class PostWatcher extends EventEmitter {
  readonly server: net.Server;
  port = 0;

  constructor(upstream: number) {
    super();
    this.server = net.createServer((downstream) => {
      const up = net.connect(upstream, LOOPBACK);
      downstream.on("data", (chunk: Buffer) => {
        up.write(chunk);
        if (chunk.subarray(0, 5).toString() === "POST ") this.emit("post");
      });
      up.pipe(downstream);
      const close = (): void => {
        downstream.destroy();
        up.destroy();
      };
      up.on("error", close).on("close", close);
      downstream.on("error", close).on("close", close);
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, LOOPBACK, resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
  }
}

function entry(id: string, url: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { endpoint_id: id, url, location: "us-west-2-lax-1a", accelerator: "cpu", model: "tiny", cost_weight: 10, ...extra };
}

describe("plain http, no auth", () => {
  let lz: ChildProcess;
  let proxy: PostWatcher;
  let regionUrl = "";
  let lzUrl = "";

  before(async () => {
    const [lzPort, regionPort] = [await freePort(), await freePort()];
    lz = startServer(lzPort, "--auth", "none");
    const region = startServer(regionPort, "--auth", "none");
    proxy = new PostWatcher(lzPort);
    await proxy.listen();
    lzUrl = `http://${LOOPBACK}:${proxy.port}`;
    regionUrl = `http://${LOOPBACK}:${regionPort}`;
    await Promise.all([waitReady(`http://${LOOPBACK}:${lzPort}`, lz), waitReady(regionUrl, region)]);
  });

  after(() => proxy.server.close());

  test("generates a PNG on the Local Zone server (JSON answer: every image, the seed, the timings)", async () => {
    const client = new EdgeDiffusionClient({ endpoints: [entry("lz", lzUrl), entry("region", regionUrl, { kind: "region" })], onWarning: quiet });
    const result = await client.generate(QUICK, { deadlineMs: 60_000 });
    assert.equal(result.endpoint.endpointId, "lz");
    assert.deepEqual(result.attempts.map((a) => a.outcome), ["ok"]);
    assert.deepEqual(Buffer.from(result.images[0]!.subarray(0, 8)), PNG_MAGIC);
    assert.equal(result.mediaType, "image/png");
    assert.equal(result.seed, 1);
    assert.match(result.requestId ?? "", /^[0-9a-f]{32}$/);
    assert.equal(result.serverTimings.batchSize, 1);
    assert.equal(result.probes.length, 2);
  });

  test("a binary PNG answer carries the seed and timings in its headers", async () => {
    const client = new EdgeDiffusionClient({ fallbackUrls: [regionUrl], onWarning: quiet });
    const result = await client.generate({ ...QUICK, seed: 5, responseFormat: "png" }, { deadlineMs: 60_000 });
    assert.deepEqual(Buffer.from(result.images[0]!.subarray(0, 8)), PNG_MAGIC);
    assert.equal(result.seed, 5);
    assert.equal(result.serverTimings.batchSize, 1);
    assert.ok((result.serverTimings.inferenceMs ?? -1) > 0);
    assert.match(result.requestId ?? "", /^[0-9a-f]{32}$/);
  });

  test("the server's 422 fails at once, naming the field", async () => {
    const client = new EdgeDiffusionClient({ fallbackUrls: [regionUrl, lzUrl], onWarning: quiet });
    const error = await client.generate({ ...QUICK, steps: 999 }).catch((err: unknown) => err);
    assert.ok(error instanceof RequestRejectedError, String(error));
    assert.equal(error.message, "request rejected (422): steps: 999 is not allowed; allowed: an integer from 1 to 100");
    assert.equal(error.field, "steps");
    assert.equal(error.status, 422);
  });

  test("an empty inventory falls back to the fallback URL", async () => {
    const client = new EdgeDiffusionClient({ endpoints: { endpoints: [] }, fallbackUrls: [regionUrl], onWarning: quiet });
    const result = await client.generate(QUICK, { deadlineMs: 60_000 });
    assert.equal(result.endpoint.endpointId, `fallback ${regionUrl}`);
    assert.deepEqual(result.probes, []);
  });

  test("cancelling stops at once: no failover, the signal's reason", async () => {
    const client = new EdgeDiffusionClient({ endpoints: [entry("lz", lzUrl)], fallbackUrls: [regionUrl], onWarning: quiet });
    const controller = new AbortController();
    proxy.once("post", () => controller.abort(new Error("the user left the scene")));
    const error = await client.generate(SLOW, { signal: controller.signal }).catch((err: unknown) => err);
    assert.equal((error as Error).message, "the user left the scene");
  });

  test("an image prompt as base64 JSON (image, strength) is accepted", async () => {
    const client = new EdgeDiffusionClient({ fallbackUrls: [regionUrl], onWarning: quiet });
    const source = await client.generate({ ...QUICK, responseFormat: "png" });
    const image = Buffer.from(source.images[0]!).toString("base64");
    const result = await client.generate({ ...QUICK, image: `data:image/png;base64,${image}`, strength: 0.6 });
    assert.deepEqual(Buffer.from(result.images[0]!.subarray(0, 8)), PNG_MAGIC);
  });

  test("an image prompt as bytes goes as multipart/form-data", async () => {
    const client = new EdgeDiffusionClient({ fallbackUrls: [regionUrl], onWarning: quiet });
    const source = await client.generate({ ...QUICK, responseFormat: "png" });
    const result = await client.generate({ ...QUICK, image: source.images[0]!, strength: 0.5, responseFormat: "png" });
    assert.deepEqual(Buffer.from(result.images[0]!.subarray(0, 8)), PNG_MAGIC);
  });

  test("a jpeg answer, with its quality", async () => {
    const client = new EdgeDiffusionClient({ fallbackUrls: [regionUrl], onWarning: quiet });
    const result = await client.generate({ ...QUICK, responseFormat: "jpeg", quality: 80 });
    assert.equal(result.mediaType, "image/jpeg");
    assert.deepEqual(Buffer.from(result.images[0]!.subarray(0, 3)), JPEG_MAGIC);
  });

  test("webp images inside a JSON answer (output_format)", async () => {
    const client = new EdgeDiffusionClient({ fallbackUrls: [regionUrl], onWarning: quiet });
    const result = await client.generate({ ...QUICK, numImages: 2, outputFormat: "webp", quality: 70 });
    assert.equal(result.mediaType, "image/webp");
    assert.equal(result.images.length, 2);
  });

  test("the Local Zone server killed mid-request: the Region serves within the same deadline", async () => {
    // Runs last here: it kills the Local Zone server.
    const client = new EdgeDiffusionClient({ endpoints: [entry("region", regionUrl, { kind: "region" }), entry("lz", lzUrl)], onWarning: quiet });
    proxy.once("post", () => lz.kill("SIGKILL"));
    const result = await client.generate(SLOW, { deadlineMs: 60_000 });
    assert.deepEqual(result.attempts.map((a) => a.endpoint.endpointId), ["lz", "region"]);
    assert.match(result.attempts[0]!.outcome, /^connection error: /);
    assert.equal(result.attempts[1]!.outcome, "ok");
    assert.equal(result.endpoint.kind, "region");
    assert.deepEqual(Buffer.from(result.images[0]!.subarray(0, 8)), PNG_MAGIC);
    assert.ok(result.timings.totalMs < 60_000);
  });
});

describe("TLS with a private CA, and tokens from the real token route", () => {
  const directory = scratch("secure");
  const documentFile = join(directory, "endpoints.json");
  let ca = "";
  let url = "";
  let inventoryUrl = "";
  let statsUrl = "";
  const signer = testSigner({ accessKeyId: "AKIDEXAMPLE", secretAccessKey: "secret" });

  const tokenCalls = async (): Promise<number> => ((await (await fetch(statsUrl)).json()) as { token_calls: number }).token_calls;

  before(async () => {
    makeTls(directory);
    ca = readFileSync(join(directory, "ca.pem"), "utf8");
    writeFileSync(documentFile, JSON.stringify({ auth: "token", endpoints: [] }));
    const helper = await startHelper(["inventory", "--document", documentFile, "--public-key", join(directory, "token.pem"), "--first-token-bad"]);
    children.push(helper.process);
    inventoryUrl = `http://${LOOPBACK}:${helper.ready["port"]}/v1/endpoints`;
    statsUrl = `http://${LOOPBACK}:${helper.ready["port"]}/stats`;
    const port = await freePort();
    url = `https://${LOOPBACK}:${port}`;
    const server = startServer(
      port,
      ...["--tls-cert-file", join(directory, "trusted.pem"), "--tls-key-file", join(directory, "trusted.key")],
      ...["--auth", "token", "--token-public-key-file", String(helper.ready["public_key"]), "--token-issuer", String(helper.ready["issuer"])],
    );
    const document = { auth: "token", endpoints: [entry("lz/tls", url, { server_name: SERVER_NAME })] };
    writeFileSync(documentFile, JSON.stringify(document));
    const probe = nodeTransport({ ca }).fetch;
    await waitReady(url, server, (u) => probe(u, { method: "GET", headers: {}, signal: new AbortController().signal }));
  });

  test("a refused token is renewed once; the next is cached; a token near its expiry is fetched anew", async () => {
    let aheadMs = 0;
    const client = new EdgeDiffusionClient({
      inventoryUrl,
      signer,
      region: "us-west-2",
      transport: nodeTransport({ ca }),
      now: () => Date.now() + aheadMs,
      onWarning: quiet,
    });
    const first = await client.generate(QUICK, { deadlineMs: 60_000 }); // the first token is signed by a key the server does not trust
    assert.deepEqual(first.attempts.map((a) => a.outcome), ["401: token renewed", "ok"]);
    assert.equal(first.endpoint.serverName, SERVER_NAME);
    assert.equal(await tokenCalls(), 2);
    const second = await client.generate(QUICK, { deadlineMs: 60_000 });
    assert.deepEqual(second.attempts.map((a) => a.outcome), ["ok"]);
    assert.equal(await tokenCalls(), 2); // cached
    aheadMs = 250_000; // 300 s tokens: renewed from 240 s on
    const third = await client.generate(QUICK, { deadlineMs: 60_000 });
    assert.deepEqual(third.attempts.map((a) => a.outcome), ["ok"]);
    assert.equal(await tokenCalls(), 3);
    assert.deepEqual(Buffer.from(third.images[0]!.subarray(0, 8)), PNG_MAGIC);
  });

  test("a wrong server name fails in one line", async () => {
    const endpoints = [entry("lz/tls", url, { server_name: "wrong.test.example" })];
    const client = new EdgeDiffusionClient({ endpoints, token: "unused", transport: nodeTransport({ ca }), onWarning: quiet });
    const error = await client.generate(QUICK, { deadlineMs: 30_000 }).catch((err: unknown) => err);
    assert.ok(error instanceof NoEndpointError);
    assert.equal(
      error.message,
      `no endpoint produced an image within 30s (lz/tls (${url}, TLS name wrong.test.example): not tried, /healthz TLS verification failed (Hostname mismatch, certificate is not valid for 'wrong.test.example'); no endpoint was reachable)`,
    );
  });

  test("the platform's fetch cannot send a server name: such an entry is skipped in one line", async () => {
    const endpoints = [entry("lz/tls", url, { server_name: SERVER_NAME })];
    const client = new EdgeDiffusionClient({ endpoints, token: "unused", onWarning: quiet });
    const error = await client.generate(QUICK, { deadlineMs: 30_000 }).catch((err: unknown) => err);
    assert.ok(error instanceof NoEndpointError);
    assert.equal(
      error.message,
      `no endpoint produced an image within 30s (lz/tls (${url}, TLS name ${SERVER_NAME}): not tried, this transport cannot send its TLS name (on Node: nodeTransport from @edge-diffusion/client/node); no endpoint was reachable)`,
    );
  });

  test("the platform's fetch trusts the private CA through NODE_EXTRA_CA_CERTS, and only then", async () => {
    const tokenUrl = inventoryUrl.replace(/endpoints$/, "token");
    const headers = await signer({ method: "GET", url: tokenUrl, headers: {}, region: "us-west-2", service: "execute-api" });
    const { token } = (await (await fetch(tokenUrl, { headers })).json()) as { token: string };
    const byName = url.replace(LOOPBACK, "localhost"); // the certificate names localhost, as a fallback URL needs
    const child = join(ROOT, "sdk", "typescript", "dist-test", "tls-child.js");
    const run = (extra: Record<string, string>): Record<string, unknown> => {
      const env: Record<string, string | undefined> = { ...process.env, EDGE_DIFFUSION_TOKEN: token, ...extra };
      delete env["NODE_TEST_CONTEXT"];
      if (!extra["NODE_EXTRA_CA_CERTS"]) delete env["NODE_EXTRA_CA_CERTS"];
      const done = spawnSync(process.execPath, [child, byName], { env, encoding: "utf8", timeout: 90_000 });
      assert.equal(done.status, 0, done.stderr);
      return JSON.parse(done.stdout.trim().split("\n").pop()!) as Record<string, unknown>;
    };
    const trusted = run({ NODE_EXTRA_CA_CERTS: join(directory, "ca.pem") });
    assert.equal(trusted["served"], byName);
    assert.equal(trusted["mediaType"], "image/png");
    assert.equal(trusted["seed"], 3);
    assert.ok((trusted["bytes"] as number) > 8);
    const untrusted = run({});
    assert.match(
      String(untrusted["error"]),
      /^no endpoint produced an image within 60s \(fallback https:\/\/localhost:\d+: connection error: TLS verification failed \(self-signed certificate in certificate chain; a private CA must be trusted by the platform \(Node: NODE_EXTRA_CA_CERTS\)\)\)$/,
    );
  });
});

after(async () => {
  await Promise.all(
    children.map(async (child) => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, "exit");
      child.kill("SIGKILL");
      await exited;
    }),
  );
  console.error("after: all children gone");
});
