/**
 * Credentials: where a bearer token (or a signed request) may go, and the token itself.
 *
 * Inference endpoints require `Authorization: Bearer <token>` unless the deployment runs without
 * auth. `TokenSource` holds a token the app gave, or one fetched from the inventory API's token
 * route (signed by the app's signer), cached until shortly before it expires and fetched again
 * when an endpoint says it is no longer valid. A token is valid on every endpoint of the
 * deployment for its whole lifetime, so it never travels unencrypted beyond the device: https,
 * or plain http to a loopback address only.
 */

import { TokenError } from "./errors.js";
import { hostnameOf, parseIPv4, parseIPv6, pyRepr, urlSplit } from "./text.js";

/** A cached token is renewed this long before it expires (capped at a fifth of its lifetime). */
export const REFRESH_BEFORE_MS = 60_000;
export const CREDENTIAL_URLS = "https, or http to a loopback address (127.0.0.0/8, ::1, localhost) for development";

/**
 * 127.0.0.0/8, ::1 or `localhost`, written as such. Other spellings (127.1, ::ffff:127.0.0.1,
 * names that merely resolve to loopback) are not: what the URL says is checked, not what a
 * resolver might answer.
 */
export function isLoopback(host: string): boolean {
  if (host.toLowerCase() === "localhost") return true;
  const v4 = parseIPv4(host);
  if (v4 !== null) return v4[0] === 127;
  const v6 = parseIPv6(host);
  return v6 !== null && v6.slice(0, 7).every((group) => group === 0) && v6[7] === 1;
}

/**
 * Whether a bearer token or a signed request may go to `url`: https, or http to loopback. Both
 * readings of the URL must agree, Python's urlsplit (the Python client's rule) and the WHATWG URL
 * parser (where fetch actually connects), so no spelling passes one and connects elsewhere.
 */
export function carriesCredentials(url: string): boolean {
  let parts;
  let whatwg: URL;
  try {
    parts = urlSplit(url);
    whatwg = new URL(url);
  } catch {
    return false;
  }
  const scheme = parts.scheme.toLowerCase();
  if (scheme === "https") return whatwg.protocol === "https:";
  if (scheme !== "http" || whatwg.protocol !== "http:") return false;
  const host = whatwg.hostname.replace(/^\[(.*)\]$/, "$1");
  return isLoopback(hostnameOf(parts) ?? "") && isLoopback(host);
}

/** The Region of an execute-api URL (`https://id.execute-api.REGION.amazonaws.com/...`). */
export function regionOf(url: string): string | null {
  let labels: string[];
  try {
    labels = (hostnameOf(urlSplit(url)) ?? "").split(".");
  } catch {
    return null;
  }
  return labels.length > 3 && labels[1] === "execute-api" ? labels[2]! : null;
}

/** The token route next to the endpoints route: `.../v1/endpoints` -> `.../v1/token`. */
export function tokenUrlFor(inventoryUrl: string): string {
  const parts = urlSplit(inventoryUrl);
  const trimmed = parts.path.replace(/\/+$/, "");
  const base = trimmed.slice(0, Math.max(0, trimmed.lastIndexOf("/")));
  return `${parts.scheme}://${parts.netloc}${base}/token`;
}

function base64UrlDecode(text: string): string {
  const padded = text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4);
  const binary = atob(padded);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/** The `exp` of a JWT in epoch seconds, read without verifying it (the server verifies); null without one. */
export function tokenExpiry(token: string): number | null {
  try {
    const payload = token.split(".")[1];
    if (payload === undefined) return null;
    const claims: unknown = JSON.parse(base64UrlDecode(payload));
    if (claims === null || typeof claims !== "object" || Array.isArray(claims)) return null;
    const exp = (claims as Record<string, unknown>)["exp"];
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

/** `YYYY-MM-DD HH:MM:SSZ` of an epoch in seconds. */
export function formatUtc(epochS: number): string {
  return new Date(Math.floor(epochS) * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

/** Gets a token from the token route: the client signs it and applies its deadline and transport. */
export type TokenFetcher = (url: string) => Promise<{ status: number; text: string }>;

/** The bearer token inference requests carry: given by the app, or fetched from the token route. */
export class TokenSource {
  private token: string | null;
  private expiresAtS: number | null;
  private fetchedAtS = 0;
  private pending: Promise<void> | null = null;

  private constructor(
    token: string | null,
    private readonly url: string | null,
    private readonly nowMs: () => number,
  ) {
    this.token = token;
    this.expiresAtS = token !== null ? tokenExpiry(token) : null;
  }

  static given(token: string, nowMs: () => number): TokenSource {
    return new TokenSource(token, null, nowMs);
  }

  static fetched(url: string, nowMs: () => number): TokenSource {
    return new TokenSource(null, url, nowMs);
  }

  get refreshable(): boolean {
    return this.url !== null;
  }

  /** A token valid for a while yet (fetched with `fetcher` when needed); TokenError (one line) if there is none. */
  async get(fetcher: TokenFetcher): Promise<string> {
    const now = this.nowMs() / 1000;
    if (this.url === null) {
      if (this.expiresAtS !== null && this.expiresAtS <= now) {
        throw new TokenError(`the token given expired at ${formatUtc(this.expiresAtS)}: get a new one`);
      }
      return this.token!;
    }
    if (this.token === null || this.stale(now)) {
      // concurrent generations share one fetch
      this.pending ??= this.fetch(now, fetcher).finally(() => {
        this.pending = null;
      });
      await this.pending;
    }
    return this.token!;
  }

  /** Forget a fetched token (an endpoint refused it); a given one cannot be renewed. */
  invalidate(): void {
    if (this.url !== null) this.token = null;
  }

  private stale(now: number): boolean {
    if (this.expiresAtS === null) return false;
    const margin = Math.min(REFRESH_BEFORE_MS / 1000, Math.max(0, this.expiresAtS - this.fetchedAtS) / 5);
    return now >= this.expiresAtS - margin;
  }

  private async fetch(now: number, fetcher: TokenFetcher): Promise<void> {
    const url = this.url!;
    const answer = await fetcher(url);
    if (answer.status !== 200) {
      throw new TokenError(`token route ${url} answered ${answer.status}: ${answer.text.slice(0, 200)}`);
    }
    let token: unknown;
    let expires: unknown;
    try {
      const body: unknown = JSON.parse(answer.text);
      if (body === null || typeof body !== "object" || Array.isArray(body)) throw new Error("not an object");
      const fields = body as Record<string, unknown>;
      if (!("token" in fields) || !("expiresAt" in fields)) throw new Error("missing");
      token = fields["token"];
      expires = fields["expiresAt"];
    } catch {
      throw new TokenError(`token route ${url} did not answer {token, expiresAt}`);
    }
    if (typeof token !== "string" || !token || typeof expires !== "number" || expires <= now) {
      throw new TokenError(`token route ${url} answered an unusable token (expiresAt=${pyRepr(expires)})`);
    }
    this.token = token;
    this.expiresAtS = expires;
    this.fetchedAtS = now;
  }
}
