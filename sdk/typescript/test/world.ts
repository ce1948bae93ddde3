/**
 * The scripted loopback world of tests/clients/scenarios.json, in Node: endpoints and an inventory
 * API as real HTTP(S) servers on 127.0.0.1 that answer as a scenario scripts them and record what
 * reached them, so the SDK runs over its real transports. tests/clients/scripted.py builds the
 * same world for the Python client; scenarios.json's `about` is the script language both follow.
 */

import { readFileSync } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { join } from "node:path";

export const LOOPBACK = "127.0.0.1";

/** What scenarios.json holds. */
export interface ScenarioFile {
  about: string[];
  png_base64: string;
  scenarios: Scenario[];
}

export interface Scenario {
  name: string;
  about: string;
  servers: Record<string, ServerSpec>;
  inventory: { via: "api" | "document" | "entries"; document: Record<string, unknown>; answer?: Scripted; token_route?: TokenAnswer[] };
  client?: Record<string, unknown>;
  calls: Call[];
}

export interface ServerSpec {
  scheme?: "http" | "https";
  certificate?: "trusted" | "name-only" | "untrusted";
  listen?: boolean;
  healthz?: { status?: number; delay_ms?: number };
  images?: Answer[];
  tokens?: string[];
}

interface Scripted {
  status?: number;
  json?: unknown;
  text?: string;
  content_type?: string;
}

type Answer = Scripted & { ok?: "json" | "png"; seed?: number; count?: number; close?: boolean; delay_ms?: number };
type TokenAnswer = Scripted & { token?: string; expires_in_s?: number; expires_at?: number };

export interface Call {
  clock_s?: number;
  deadline_s?: number;
  request?: Record<string, unknown>;
  expect: Record<string, unknown>;
}

export interface Record_ {
  server: string;
  method: string;
  path: string;
  authorization: string | null;
  body: Buffer;
}

/** The certificates (written by `python -m tests.clients.helper tls DIR`): the CA the client trusts, and three server pairs. */
export interface Tls {
  ca: string;
  pairs: Record<string, { cert: string; key: string }>;
}

export function readTls(directory: string): Tls {
  const pairs: Tls["pairs"] = {};
  for (const name of ["trusted", "name-only", "untrusted"]) {
    pairs[name] = { cert: readFileSync(join(directory, `${name}.pem`), "utf8"), key: readFileSync(join(directory, `${name}.key`), "utf8") };
  }
  return { ca: readFileSync(join(directory, "ca.pem"), "utf8"), pairs };
}

export async function freePort(): Promise<number> {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, LOOPBACK, resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

function readBody(request: http.IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => resolve(Buffer.concat(chunks)));
    request.on("error", reject);
  });
}

function send(response: http.ServerResponse, status: number, body: string | Buffer, contentType: string, headers: Record<string, string> = {}): void {
  const bytes = typeof body === "string" ? Buffer.from(body) : body;
  response.writeHead(status, { "Content-Type": contentType, "Content-Length": String(bytes.length), ...headers });
  response.end(bytes);
}

function scripted(response: http.ServerResponse, spec: Scripted, fallback: unknown): void {
  const status = spec.status ?? 200;
  if (spec.text !== undefined) send(response, status, spec.text, spec.content_type ?? "text/plain; charset=utf-8");
  else send(response, status, JSON.stringify(spec.json ?? fallback), spec.content_type ?? "application/json");
}

const PLACEHOLDER = /\{([a-z0-9_-]+)(\.port)?\}/g;

/** One scenario's servers, the inventory API, and what reached them. */
export class World {
  offsetS = 0;
  records: Record_[] = [];
  tokenCalls = 0;
  private tokensIssued = 0;
  inventoryQueries: Array<Record<string, string>> = [];
  readonly urls: Record<string, string> = {};
  readonly ports: Record<string, number> = {};
  private readonly servers: http.Server[] = [];
  private readonly timers = new Set<NodeJS.Timeout>();
  private stopped = false;

  constructor(private readonly png: Buffer) {}

  reset(): void {
    this.records = [];
    this.inventoryQueries = [];
    this.tokenCalls = 0;
  }

  /** `value` with every placeholder ({name}, {name.port}, {inventory}, {token_url}) filled in. */
  sub<T>(value: T): T {
    if (typeof value === "string") {
      return value.replace(PLACEHOLDER, (whole, name: string, port?: string) => {
        if (port && name in this.ports) return String(this.ports[name]);
        if (!port && name in this.urls) return this.urls[name]!;
        return whole;
      }) as T;
    }
    if (Array.isArray(value)) return value.map((item) => this.sub(item)) as T;
    if (value !== null && typeof value === "object") {
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, this.sub(v)])) as T;
    }
    return value;
  }

  private wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      if (this.stopped || ms <= 0) return resolve();
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        resolve();
      }, ms);
      this.timers.add(timer);
    });
  }

  async start(scenario: Scenario, tls: Tls): Promise<void> {
    for (const [name, spec] of Object.entries(scenario.servers)) {
      const scheme = spec.scheme ?? "http";
      const port = await freePort();
      this.ports[name] = port;
      this.urls[name] = `${scheme}://${LOOPBACK}:${port}`;
      if (spec.listen === false) continue;
      const handler = this.endpoint(name, spec);
      const server = scheme === "https" ? https.createServer(tls.pairs[spec.certificate ?? "trusted"]!, handler) : http.createServer(handler);
      await this.listen(server, port);
    }
    if (scenario.inventory.via === "api") {
      const port = await freePort();
      await this.listen(http.createServer(this.inventory(scenario.inventory)), port);
      this.urls["inventory"] = `http://${LOOPBACK}:${port}/v1/endpoints`;
      this.urls["token_url"] = `http://${LOOPBACK}:${port}/v1/token`;
    }
  }

  private async listen(server: http.Server, port: number): Promise<void> {
    server.on("tlsClientError", () => undefined); // a client refusing our certificate is part of the script
    await new Promise<void>((resolve) => server.listen(port, LOOPBACK, resolve));
    this.servers.push(server);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const timer of this.timers) clearTimeout(timer);
    await Promise.all(
      this.servers.map(
        (server) =>
          new Promise((resolve) => {
            server.close(resolve);
            server.closeAllConnections();
          }),
      ),
    );
  }

  private endpoint(name: string, spec: ServerSpec): http.RequestListener {
    const answers: Answer[] = spec.images?.length ? spec.images : [{ ok: "json" }];
    let served = 0;
    return async (request, response) => {
      const authorization = request.headers.authorization ?? null;
      const body = await readBody(request);
      const path = request.url ?? "";
      this.records.push({ server: name, method: request.method ?? "", path, authorization, body });
      if (request.method === "GET") {
        if (path !== "/healthz") return send(response, 404, JSON.stringify({ error: "not found" }), "application/json");
        await this.wait(spec.healthz?.delay_ms ?? 0);
        return send(response, spec.healthz?.status ?? 200, JSON.stringify({ status: "alive" }), "application/json");
      }
      if (path !== "/v1/images") return send(response, 404, JSON.stringify({ error: "not found" }), "application/json");
      if (spec.tokens && !spec.tokens.some((t) => authorization === `Bearer ${t}`)) {
        const reason = authorization ? "token: signature does not verify" : "authorization: missing";
        const error = { error: reason, field: "authorization", request_id: `req-${name}-401` };
        return send(response, 401, JSON.stringify(error), "application/json", { "WWW-Authenticate": "Bearer" });
      }
      const answer = answers[Math.min(served, answers.length - 1)]!;
      served += 1;
      await this.wait(answer.delay_ms ?? 0);
      const requestId = `req-${name}-${served}`;
      if (answer.close) {
        request.socket.destroy();
        return;
      }
      const meta = { "X-Request-Id": requestId, "X-Queue-Ms": "1.5", "X-Inference-Ms": "20.0", "X-Batch-Size": "1" };
      const seed = answer.seed ?? 7;
      if (answer.ok === "png") return send(response, 200, this.png, "image/png", { ...meta, "X-Seed": String(seed) });
      if (answer.ok === "json") {
        const images = new Array<string>(answer.count ?? 1).fill(this.png.toString("base64"));
        const payload = {
          request_id: requestId,
          seed,
          width: 64,
          height: 64,
          steps: 2,
          images,
          timings: { queue_ms: 1.5, inference_ms: 20.0, batch_size: 1 },
        };
        return send(response, 200, JSON.stringify(payload), "application/json", { ...meta, "X-Seed": String(seed) });
      }
      scripted(response, answer, { error: `${answer.status} from ${name}`, request_id: requestId });
    };
  }

  private inventory(spec: Scenario["inventory"]): http.RequestListener {
    const route: TokenAnswer[] = spec.token_route?.length ? spec.token_route : [{ status: 404, json: { message: "no token route" } }];
    return async (request, response) => {
      await readBody(request);
      if (!(request.headers.authorization ?? "").startsWith("AWS4-HMAC-SHA256 ")) {
        return send(response, 403, JSON.stringify({ message: "Missing Authentication Token" }), "application/json");
      }
      const url = new URL(request.url ?? "/", "http://inventory");
      if (url.pathname === "/v1/token") {
        this.tokenCalls += 1;
        this.tokensIssued += 1;
        const answer = route[Math.min(this.tokensIssued - 1, route.length - 1)]!;
        if (answer.token !== undefined) {
          const expires = answer.expires_at ?? Math.floor(Date.now() / 1000 + this.offsetS + answer.expires_in_s!);
          return send(response, 200, JSON.stringify({ token: answer.token, expiresAt: expires }), "application/json");
        }
        return scripted(response, answer, { message: "token route error" });
      }
      this.inventoryQueries.push(Object.fromEntries(url.searchParams));
      if (spec.answer) return scripted(response, spec.answer, { message: "inventory error" });
      send(response, 200, JSON.stringify(this.sub(spec.document)), "application/json");
    };
  }
}
