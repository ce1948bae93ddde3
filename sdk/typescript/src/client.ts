/**
 * Pull the endpoint inventory, pick the nearest healthy endpoint, generate there, fail over:
 * the device client of runtime/client, for WebXR pages, React Native apps and Node.
 *
 * Order: Local Zone endpoints by round-trip time of `GET /healthz` (the best of two probes, so
 * connection setup does not decide), in buckets of `tieMs`; within a bucket the cheaper
 * accelerator (higher `cost_weight`) first. Then the Region's entries (also probed), then the
 * app's `fallbackUrls` (not probed: they work with no inventory at all). Failover: a connection
 * error, a TLS failure, 429 or a 5xx moves to the next endpoint, all within one total deadline that
 * covers the inventory, the token and the probes too (a request waits at most what is left of it,
 * so a timeout ends the call); any other answer but 200 is
 * the request's fault and fails at once (no other endpoint would accept it), except a 401 on a
 * fetched token, which is renewed and retried once. The app's AbortSignal cancels at once.
 *
 * Security: a bearer token goes only over https, or plain http to a loopback address; with a
 * token, a plain-http endpoint elsewhere is skipped (one warning) and failover goes on. The
 * inventory and token URLs must be https (or loopback) in any case: the inventory's answer
 * decides where tokens go. TLS is the platform's, verified; an entry's `server_name` needs a
 * transport that can send it (Node: `nodeTransport`), else the entry is skipped.
 */

import { CREDENTIAL_URLS, TokenSource, carriesCredentials, regionOf, tokenUrlFor } from "./auth.js";
import { ClientError, NoEndpointError, RequestRejectedError, TokenError } from "./errors.js";
import { described, fallbackEndpoint, isRegion, parseInventory } from "./inventory.js";
import {
  BadResponse,
  HEALTH_PATH,
  IMAGES_PATH,
  decodeImages,
  encodeRequest,
  errorMessage,
} from "./request.js";
import { formatG, pyRepr, urlSplit } from "./text.js";
import { Failure, failureDetail, failureKind, failureWhy, fetchTransport, limit } from "./transport.js";
import type {
  Attempt,
  ClientOptions,
  Endpoint,
  FetchInit,
  FetchLike,
  GenerateOptions,
  GenerationResult,
  ImageRequest,
  InventoryFilters,
  Probe,
  Signer,
  Transport,
} from "./types.js";

export const DEFAULT_DEADLINE_MS = 120_000;
export const DEFAULT_PROBE_TIMEOUT_MS = 2_000;
export const DEFAULT_TIE_MS = 5;
const TOKEN_TIMEOUT_MS = 10_000;
const FILTER_FLAGS: Record<string, string> = { model: "--model", location: "--location", accelerator: "--accelerator" };
const FILTER_NAMES = ["model", "location", "accelerator"] as const;

/** Retryable elsewhere: the queue is full (429) or the endpoint failed (any 5xx). */
export function isRetryable(status: number): boolean {
  return status === 429 || (status >= 500 && status <= 599);
}

/** Reachable endpoints, nearest first; within `tieMs` the cheaper accelerator first. */
export function rank(probes: readonly Probe[], tieMs: number = DEFAULT_TIE_MS): Endpoint[] {
  const bucket = Math.max(tieMs, 1e-6);
  const key = (p: Probe): [number, number, number] => [Math.floor(p.rttMs! / bucket), -p.endpoint.costWeight, p.rttMs!];
  return probes
    .filter((p) => p.rttMs !== null)
    .map((p) => ({ p, k: key(p) }))
    .sort((a, b) => a.k[0] - b.k[0] || a.k[1] - b.k[1] || a.k[2] - b.k[2])
    .map(({ p }) => p.endpoint);
}

interface Inventory {
  endpoints: Endpoint[];
  skipped: string[];
  /** What the inventory says endpoints require: token | none (null: not said). */
  auth: string | null;
  /** The filters matched nothing: which, and what there is. */
  unmatched: string | null;
  /** The inventory could not be read (fallback URLs were given). */
  error: string | null;
}

interface Answer {
  status: number;
  headers: Headers;
  bytes: Uint8Array;
}

/** What one generation may still spend: until `deadline` (clock milliseconds), unless cancelled. */
interface Budget {
  deadline: number;
  signal: AbortSignal | undefined;
}

const clock: () => number = (() => {
  const perf = (globalThis as { performance?: { now(): number } }).performance;
  return perf ? () => perf.now() : () => Date.now();
})();

function cancelled(signal: AbortSignal): unknown {
  if (signal.reason !== undefined) return signal.reason;
  const error = new Error("the generation was cancelled");
  error.name = "AbortError";
  return error;
}

/** Finds the nearest healthy endpoint and generates there, failing over within a deadline. */
export class EdgeDiffusionClient {
  private readonly inventoryUrl: string | null;
  private readonly given: ClientOptions["endpoints"] | null;
  private readonly fallbacks: Endpoint[];
  private readonly filters: InventoryFilters;
  private readonly signer: Signer | null;
  private readonly region: string | null;
  private readonly probeTimeoutMs: number;
  private readonly tieMs: number;
  private readonly transport: Transport;
  private readonly warn: (message: string) => void;
  private readonly explicitToken: boolean;
  private readonly tokens: TokenSource | null;
  private readonly warnedHttp = new Set<string>();
  private readonly warnedRefused = new Set<string>();
  private readonly warnedUnsendable = new Set<string>();

  constructor(options: ClientOptions) {
    const sources = [options.inventoryUrl, options.endpoints].filter((s) => s !== undefined && s !== null).length;
    if (sources > 1 || (sources === 0 && !(options.fallbackUrls ?? []).length)) {
      throw new ClientError("give one of inventoryUrl or endpoints, or fallbackUrls");
    }
    const { inventoryUrl, tokenUrl } = options;
    if (inventoryUrl !== undefined && !carriesCredentials(inventoryUrl)) {
      const why = "its answer decides where tokens go";
      throw new ClientError(`inventory URL ${pyRepr(inventoryUrl)} refused: ${why}; allowed: ${CREDENTIAL_URLS}`);
    }
    if (tokenUrl !== undefined && !carriesCredentials(tokenUrl)) {
      throw new ClientError(`token URL ${pyRepr(tokenUrl)} refused: it hands out tokens; allowed: ${CREDENTIAL_URLS}`);
    }
    for (const [name, value] of [
      ["probeTimeoutMs", options.probeTimeoutMs],
      ["tieMs", options.tieMs],
    ] as const) {
      if (value !== undefined && !(Number.isFinite(value) && value >= 0)) {
        throw new ClientError(`${name} ${pyRepr(value)}: allowed a number of milliseconds >= 0`);
      }
    }
    this.inventoryUrl = inventoryUrl ?? null;
    this.given = options.endpoints ?? null;
    this.fallbacks = (options.fallbackUrls ?? []).map((url) => {
      try {
        return fallbackEndpoint(url);
      } catch (err) {
        throw new ClientError(`fallback URL ${pyRepr(url)} is not usable: ${(err as Error).message}`);
      }
    });
    this.filters = Object.fromEntries(
      Object.entries(options.filters ?? {}).filter(([, v]) => typeof v === "string" && v),
    ) as InventoryFilters;
    for (const name of Object.keys(this.filters)) {
      if (!(FILTER_NAMES as readonly string[]).includes(name)) {
        throw new ClientError(`filter ${pyRepr(name)}: allowed ${FILTER_NAMES.join(", ")}`);
      }
    }
    this.signer = options.signer ?? null;
    this.region = options.region ?? null;
    this.probeTimeoutMs = options.probeTimeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS;
    this.tieMs = options.tieMs ?? DEFAULT_TIE_MS;
    this.transport = options.transport ?? fetchTransport();
    this.warn = options.onWarning ?? ((message: string) => console.warn(`edge-diffusion client: ${message}`));
    const now = options.now ?? (() => Date.now());
    this.explicitToken = options.token !== undefined;
    if (options.token !== undefined) {
      this.tokens = TokenSource.given(options.token, now);
    } else {
      const url = tokenUrl ?? (inventoryUrl !== undefined ? tokenUrlFor(inventoryUrl) : undefined);
      this.tokens = url !== undefined ? TokenSource.fetched(url, now) : null;
    }
  }

  // --- inventory -----------------------------------------------------------------------------

  /** The configured source's endpoints, filtered, and one warning line per skipped entry. */
  async loadInventory(options: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<{ endpoints: Endpoint[]; skipped: string[] }> {
    const inventory = await this.inventory({ deadline: clock() + (options.timeoutMs ?? DEFAULT_DEADLINE_MS), signal: options.signal });
    return { endpoints: inventory.endpoints, skipped: inventory.skipped };
  }

  private async document(budget: Budget): Promise<unknown> {
    if (this.given !== null) return Array.isArray(this.given) ? [...this.given] : this.given;
    if (this.inventoryUrl !== null) return this.fetchInventory(this.inventoryUrl, budget);
    return { endpoints: [] };
  }

  private async inventory(budget: Budget): Promise<Inventory> {
    const document = await this.document(budget);
    const { endpoints: offered, skipped } = parseInventory(document);
    for (const warning of skipped) this.warn(warning);
    const isObject = document !== null && typeof document === "object" && !Array.isArray(document);
    const auth = isObject ? (document as Record<string, unknown>)["auth"] : null;
    let endpoints = offered;
    for (const [name, value] of Object.entries(this.filters)) {
      endpoints = endpoints.filter((e) => e[name as keyof Endpoint] === value);
    }
    const unique = new Map<string, Endpoint>(); // one attempt per URL (the ALB's entries after an accelerator filter)
    for (const endpoint of endpoints) if (!unique.has(endpoint.url)) unique.set(endpoint.url, endpoint);
    let unmatched: string | null = null;
    if (offered.length && !unique.size) {
      const names = Object.keys(this.filters);
      const asked = Object.entries(this.filters).map(([k, v]) => `${FILTER_FLAGS[k] ?? k} ${v}`).join(" ");
      const listed = names
        .map((name) => {
          const values = [...new Set(offered.map((e) => String(e[name as keyof Endpoint] ?? "")))].sort();
          return `${name}s: ${values.join(", ")}`;
        })
        .join("; ");
      unmatched = `no endpoint matches ${asked} (the inventory lists ${offered.length}: ${listed})`;
    }
    return {
      endpoints: [...unique.values()],
      skipped,
      auth: auth ? String(auth) : null,
      unmatched,
      error: null,
    };
  }

  private async signed(url: string): Promise<Record<string, string>> {
    if (this.signer === null) throw new ClientError("no signer to sign the inventory request (IAM auth): pass signer");
    const region = this.region ?? regionOf(url);
    if (region === null) throw new ClientError(`cannot tell the Region of ${url}: pass the region option`);
    let headers: Record<string, string>;
    try {
      headers = await this.signer({ method: "GET", url, headers: {}, region, service: "execute-api" });
    } catch (err) {
      throw new ClientError(`signing the request to ${url} failed: ${(err as Error)?.message ?? String(err)}`);
    }
    // fetch sets Host itself (browsers refuse to let a page set it).
    return Object.fromEntries(Object.entries(headers).filter(([name]) => name.toLowerCase() !== "host"));
  }

  private withFilters(url: string): string {
    if (!Object.keys(this.filters).length) return url;
    const full = new URL(url);
    for (const [name, value] of Object.entries(this.filters)) full.searchParams.set(name, value as string);
    return full.toString();
  }

  private async fetchInventory(url: string, budget: Budget): Promise<unknown> {
    this.warnPlainHttp(url, "inventory");
    const full = this.withFilters(url);
    const headers = await this.signed(full);
    let answer: Answer;
    try {
      answer = await this.exchange(this.transport.fetch, full, { method: "GET", headers }, this.probeTimeoutMs * 5, budget);
    } catch (err) {
      if (!(err instanceof Failure)) throw err;
      throw new ClientError(`inventory ${url} unreachable: ${this.why(err)}: ${failureDetail(err)}`);
    }
    const text = new TextDecoder().decode(answer.bytes);
    if (answer.status !== 200) throw new ClientError(`inventory ${url} answered ${answer.status}: ${text.slice(0, 200)}`);
    try {
      return JSON.parse(text);
    } catch {
      throw new ClientError(`inventory ${url} did not answer JSON`);
    }
  }

  // --- the wire ------------------------------------------------------------------------------

  private fetchFor(endpoint: Endpoint): FetchLike {
    return endpoint.serverName && this.transport.withServerName
      ? this.transport.withServerName(endpoint.serverName)
      : this.transport.fetch;
  }

  private why(failure: Failure): string {
    return failureWhy(failure, this.transport.privateCaHint);
  }

  /** One request and its whole body within min(timeoutMs, what the budget has left). */
  private async exchange(
    fetchImpl: FetchLike,
    url: string,
    init: Omit<FetchInit, "signal">,
    timeoutMs: number,
    budget: Budget,
  ): Promise<Answer> {
    if (budget.signal?.aborted) throw cancelled(budget.signal);
    const time = limit(Math.min(timeoutMs, budget.deadline - clock()), budget.signal);
    try {
      const response = await fetchImpl(url, { ...init, signal: time.signal });
      const bytes = new Uint8Array(await response.arrayBuffer());
      return { status: response.status, headers: response.headers, bytes };
    } catch (err) {
      if (budget.signal?.aborted) throw cancelled(budget.signal);
      throw new Failure(time.timedOut(), err);
    } finally {
      time.done();
    }
  }

  private warnPlainHttp(url: string, what: string): void {
    if (urlSplit(url).scheme.toLowerCase() === "http" && !this.warnedHttp.has(url)) {
      this.warnedHttp.add(url);
      this.warn(`${what} ${url} is plain http (no TLS): requests to it are not encrypted`);
    }
  }

  private refuse(endpoint: Endpoint): void {
    if (!this.warnedRefused.has(endpoint.url)) {
      this.warnedRefused.add(endpoint.url);
      this.warn(
        `${described(endpoint)} skipped: plain http to a non-loopback host would expose the bearer token (allowed: ${CREDENTIAL_URLS})`,
      );
    }
  }

  // --- probing and ranking -------------------------------------------------------------------

  /** Best round trip of `GET /healthz` over `attempts` (the first pays the connection); null when the deadline cut it. */
  private async probeWithin(endpoint: Endpoint, budget: Budget, attempts = 2): Promise<Probe | null> {
    let best: number | null = null;
    for (let i = 0; i < attempts; i++) {
      const allowed = Math.min(this.probeTimeoutMs, budget.deadline - clock());
      if (allowed <= 0) return null;
      const start = clock();
      let answer: Answer;
      try {
        answer = await this.exchange(this.fetchFor(endpoint), endpoint.url + HEALTH_PATH, { method: "GET", headers: {} }, allowed, budget);
      } catch (err) {
        if (!(err instanceof Failure)) throw err;
        if (err.timedOut && allowed < this.probeTimeoutMs) return null; // the deadline's, not the endpoint's
        return { endpoint, rttMs: null, error: this.why(err) };
      }
      if (answer.status !== 200) return { endpoint, rttMs: null, error: `healthz ${answer.status}` };
      const rtt = clock() - start;
      best = best === null ? rtt : Math.min(best, rtt);
    }
    return { endpoint, rttMs: best, error: null };
  }

  /** Probes every endpoint in parallel (16 at a time). */
  async probeAll(endpoints: readonly Endpoint[], options: { signal?: AbortSignal } = {}): Promise<Probe[]> {
    const budget = { deadline: Infinity, signal: options.signal };
    return (await this.probeEach(endpoints, budget)).map(
      (p, i) => p ?? { endpoint: endpoints[i]!, rttMs: null, error: "ReadTimeout" },
    );
  }

  private async probeEach(endpoints: readonly Endpoint[], budget: Budget): Promise<Array<Probe | null>> {
    const results: Array<Probe | null> = new Array(endpoints.length).fill(null);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < endpoints.length) {
        const index = next++;
        results[index] = await this.probeWithin(endpoints[index]!, budget);
      }
    };
    await Promise.all(Array.from({ length: Math.min(16, endpoints.length) }, worker));
    return results;
  }

  /** Local Zone endpoints by latency, then the Region's, then the fallback URLs. */
  order(probes: readonly Probe[]): Endpoint[] {
    const local = rank(probes.filter((p) => !isRegion(p.endpoint)), this.tieMs);
    const region = rank(probes.filter((p) => isRegion(p.endpoint)), this.tieMs);
    return [...local, ...region, ...this.fallbacks];
  }

  // --- tokens --------------------------------------------------------------------------------

  private tokenFetcher(budget: Budget): (url: string) => Promise<{ status: number; text: string }> {
    return async (url: string) => {
      const headers = await this.signed(url);
      try {
        const answer = await this.exchange(this.transport.fetch, url, { method: "GET", headers }, TOKEN_TIMEOUT_MS, budget);
        return { status: answer.status, text: new TextDecoder().decode(answer.bytes) };
      } catch (err) {
        if (!(err instanceof Failure)) throw err;
        throw new TokenError(`token route ${url} unreachable: ${failureKind(err)}: ${failureDetail(err)}`);
      }
    };
  }

  /** The token to send: the given one, or a fetched one when the inventory says endpoints need it. */
  private async bearer(inventory: Inventory, budget: Budget): Promise<string | null> {
    if (this.tokens === null) return null;
    const wanted = this.explicitToken || inventory.auth === "token" || inventory.error !== null;
    if (!wanted) return null;
    try {
      return await this.tokens.get(this.tokenFetcher(budget));
    } catch (err) {
      if (!(err instanceof ClientError)) throw err;
      if (inventory.error !== null) {
        // best effort: the fallback URLs may not need one
        this.warn(`no token for the fallback URLs: ${err.message}`);
        return null;
      }
      throw err;
    }
  }

  // --- generation ----------------------------------------------------------------------------

  /** Generate on the nearest endpoint, failing over until `deadlineMs` (total) passes. */
  async generate(request: ImageRequest, options: GenerateOptions = {}): Promise<GenerationResult> {
    const deadlineMs = options.deadlineMs ?? DEFAULT_DEADLINE_MS;
    if (typeof deadlineMs !== "number" || !(deadlineMs > 0) || !Number.isFinite(deadlineMs)) {
      throw new ClientError(`deadlineMs ${pyRepr(deadlineMs)}: allowed a positive number of milliseconds`);
    }
    const encoded = encodeRequest(request);
    const start = clock();
    const budget: Budget = { deadline: start + deadlineMs, signal: options.signal };
    if (budget.signal?.aborted) throw cancelled(budget.signal);
    let inventory: Inventory;
    try {
      inventory = await this.inventory(budget);
    } catch (err) {
      if (!(err instanceof ClientError) || !this.fallbacks.length) throw err;
      this.warn(`${err.message}; trying the fallback URLs`);
      inventory = { endpoints: [], skipped: [], auth: null, unmatched: null, error: err.message };
    }
    let token = await this.bearer(inventory, budget);
    const inventoryDone = clock();
    if (!inventory.endpoints.length && !this.fallbacks.length) {
      if (inventory.unmatched) throw new NoEndpointError(inventory.unmatched);
      const first = inventory.skipped[0];
      throw new NoEndpointError("the inventory lists no usable endpoint" + (first ? ` (${first})` : ""));
    }
    const refused: Endpoint[] = [];
    if (token !== null) {
      const candidates = [...inventory.endpoints, ...this.fallbacks];
      refused.push(...candidates.filter((e) => !carriesCredentials(e.url)));
      refused.forEach((e) => this.refuse(e));
      if (refused.length === candidates.length) throw new NoEndpointError(this.allRefused(refused));
    }
    const unsendable = inventory.endpoints.filter((e) => !refused.includes(e) && e.serverName && !this.transport.withServerName);
    for (const endpoint of unsendable) {
      if (!this.warnedUnsendable.has(endpoint.url)) {
        this.warnedUnsendable.add(endpoint.url);
        this.warn(`${described(endpoint)} skipped: ${UNSENDABLE}`);
      }
    }
    const probing = inventory.endpoints.filter((e) => !refused.includes(e) && !unsendable.includes(e));
    const measured = await this.probeEach(probing, budget);
    const probes = measured.filter((p): p is Probe => p !== null);
    const ordered = this.order(probes).filter((e) => !refused.includes(e));
    const probeDone = clock();
    const unreachable = probes.filter((p) => p.rttMs === null);
    const attempts: Attempt[] = [];
    let renewed = false;
    const queue = [...ordered];
    while (queue.length) {
      const endpoint = queue[0]!;
      if (budget.deadline - clock() <= 0) break;
      if (token !== null && !carriesCredentials(endpoint.url)) {
        // a token came with a 401's renewal
        this.refuse(endpoint);
        refused.push(endpoint);
        queue.shift();
        continue;
      }
      this.warnPlainHttp(endpoint.url, "endpoint");
      const headers: Record<string, string> = { ...encoded.headers };
      if (token) headers["Authorization"] = `Bearer ${token}`;
      const began = clock();
      let answer: Answer;
      try {
        answer = await this.exchange(
          this.fetchFor(endpoint),
          endpoint.url + IMAGES_PATH,
          { method: "POST", headers, body: encoded.body },
          Infinity,
          budget,
        );
      } catch (err) {
        if (!(err instanceof Failure)) throw err;
        if (err.timedOut) {
          // Its only limit is what was left of the deadline: that has passed (a timer may fire a fraction of
          // a millisecond before the clock says so, and the next endpoint would get that fraction).
          attempts.push({ endpoint, outcome: "timeout", ms: clock() - began });
          this.warn(`${endpoint.endpointId} timed out`);
          break;
        } else {
          const why = this.why(err);
          attempts.push({ endpoint, outcome: `connection error: ${why}`, ms: clock() - began });
          this.warn(`${endpoint.endpointId} failed (${why}), failing over`);
        }
        queue.shift();
        continue;
      }
      const took = clock() - began;
      if (answer.status === 401 && this.tokens !== null && this.tokens.refreshable && !renewed) {
        attempts.push({ endpoint, outcome: "401: token renewed", ms: took });
        renewed = true;
        this.tokens.invalidate();
        try {
          token = await this.tokens.get(this.tokenFetcher(budget));
        } catch (err) {
          if (!(err instanceof ClientError)) throw err;
          throw new ClientError(`${endpoint.endpointId} refused the token and no new one came: ${err.message}`);
        }
        continue; // the same endpoint again, once, with the new token
      }
      if (isRetryable(answer.status)) {
        attempts.push({ endpoint, outcome: String(answer.status), ms: took });
        this.warn(`${endpoint.endpointId} answered ${answer.status}, failing over`);
        queue.shift();
        continue;
      }
      if (answer.status !== 200) {
        const said = errorMessage(answer.headers, new TextDecoder().decode(answer.bytes));
        let message = said.message;
        if (answer.status === 401 && token === null) message += ` (${NEEDS_TOKEN})`;
        throw new RequestRejectedError(answer.status, message, said.field, said.requestId);
      }
      let decoded;
      try {
        decoded = decodeImages(answer.headers, answer.bytes);
      } catch (err) {
        if (!(err instanceof BadResponse)) throw err;
        attempts.push({ endpoint, outcome: `bad response: ${err.message}`, ms: took });
        queue.shift();
        continue;
      }
      attempts.push({ endpoint, outcome: "ok", ms: took });
      const done = clock();
      return {
        images: decoded.images,
        mediaType: decoded.mediaType,
        endpoint,
        attempts,
        probes,
        timings: {
          inventoryMs: inventoryDone - start,
          probeMs: probeDone - inventoryDone,
          generateMs: done - probeDone,
          totalMs: done - start,
        },
        seed: decoded.seed,
        requestId: decoded.requestId,
        serverTimings: decoded.timings,
        skippedEntries: inventory.skipped,
      };
    }
    if (budget.signal?.aborted) throw cancelled(budget.signal);
    throw new NoEndpointError(this.failure(deadlineMs, attempts, unreachable, refused, unsendable, inventory), attempts);
  }

  /** One line: every candidate is plain http elsewhere than loopback, and a token would go along. */
  private allRefused(refused: readonly Endpoint[]): string {
    const urls = [...new Set(refused.map((e) => e.url))].join(", ");
    const hint = this.explicitToken ? " (or give no token, if these endpoints need none)" : "";
    return `refused to send the bearer token over plain http to ${urls}; allowed: ${CREDENTIAL_URLS}${hint}`;
  }

  /** One line: every endpoint tried and why it did not serve, and what was never tried. */
  private failure(
    deadlineMs: number,
    attempts: readonly Attempt[],
    unreachable: readonly Probe[],
    refused: readonly Endpoint[],
    unsendable: readonly Endpoint[],
    inventory: Inventory,
  ): string {
    const parts = attempts.map((a) => `${described(a.endpoint)}: ${a.outcome}`);
    parts.push(...unreachable.map((p) => `${described(p.endpoint)}: not tried, ${HEALTH_PATH} ${p.error}`));
    parts.push(...refused.map((e) => `${described(e)}: not tried, plain http would expose the bearer token`));
    parts.push(...unsendable.map((e) => `${described(e)}: not tried, ${UNSENDABLE}`));
    if (inventory.unmatched) parts.push(inventory.unmatched);
    if (inventory.error) parts.push(inventory.error);
    if (!attempts.length) {
      const none = unreachable.length || unsendable.length;
      parts.push(none ? "no endpoint was reachable" : "the deadline passed before any attempt");
    }
    return `no endpoint produced an image within ${formatG(deadlineMs / 1000)}s (${parts.join("; ")})`;
  }
}

const NEEDS_TOKEN = "the endpoint requires a token: pass token, or use inventoryUrl to get one";
const UNSENDABLE =
  "this transport cannot send its TLS name (on Node: nodeTransport from @edge-diffusion/client/node)";
