/**
 * Requests on the wire: the platform's fetch as the default transport, time limits that also
 * honour the app's AbortSignal, and one word or phrase for each way a request can fail.
 *
 * Failures are named as the Python client names them (the httpx exception's class: ConnectError,
 * ConnectTimeout, ReadTimeout, RemoteProtocolError, ReadError, WriteError), and a TLS failure by
 * what OpenSSL said, so that both clients print the same line for the same failure.
 */

import type { FetchInit, FetchLike, Transport } from "./types.js";

/** A failure a transport names itself (the Node transport knows whether it had connected). */
export class TransportError extends Error {
  readonly kind: string;

  constructor(kind: string, message: string, options?: { cause?: unknown }) {
    super(message);
    this.name = "TransportError";
    this.kind = kind;
    if (options && "cause" in options) (this as { cause?: unknown }).cause = options.cause;
  }
}

const DEFAULT_CA_HINT = "a private CA must be trusted by the platform (Node: NODE_EXTRA_CA_CERTS)";

/** The platform's fetch (browsers, React Native, Node 18+), or one the app passes. */
export function fetchTransport(fetchImpl?: FetchLike): Transport {
  const platform = (globalThis as { fetch?: FetchLike }).fetch;
  const chosen = fetchImpl ?? (platform ? (url: string, init: FetchInit) => platform(url, init) : undefined);
  if (!chosen) throw new Error("this platform has no fetch: pass transport: { fetch }");
  return { fetch: chosen, privateCaHint: DEFAULT_CA_HINT };
}

/** A time limit for one request, ended early by the app's signal. */
export interface Limit {
  readonly signal: AbortSignal;
  timedOut(): boolean;
  done(): void;
}

export function limit(ms: number, parent?: AbortSignal): Limit {
  const controller = new AbortController();
  let fired = false;
  const timer = setTimeout(
    () => {
      fired = true;
      controller.abort(new TransportError("ReadTimeout", "timed out"));
    },
    Math.min(Math.max(0, ms), 2_147_483_647), // setTimeout's longest delay
  );
  const onAbort = (): void => controller.abort(parent?.reason);
  if (parent?.aborted) controller.abort(parent.reason);
  else parent?.addEventListener("abort", onAbort, { once: true });
  return {
    signal: controller.signal,
    timedOut: () => fired,
    done: () => {
      clearTimeout(timer);
      parent?.removeEventListener("abort", onAbort);
    },
  };
}

/** A request that got no answer: it timed out (its limit fired), or the transport failed. */
export class Failure {
  constructor(
    readonly timedOut: boolean,
    readonly error: unknown,
  ) {}
}

// OpenSSL's certificate verification errors, as Node names them (err.code); err.message is
// OpenSSL's own text, the same the Python client prints.
const VERIFY_CODES = new Set([
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_DECRYPT_CERT_SIGNATURE",
  "UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY",
  "CERT_SIGNATURE_FAILURE",
  "CERT_NOT_YET_VALID",
  "CERT_HAS_EXPIRED",
  "ERROR_IN_CERT_NOT_BEFORE_FIELD",
  "ERROR_IN_CERT_NOT_AFTER_FIELD",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "CERT_CHAIN_TOO_LONG",
  "CERT_REVOKED",
  "INVALID_CA",
  "PATH_LENGTH_EXCEEDED",
  "INVALID_PURPOSE",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
]);
const CONNECT_CODES = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EADDRNOTAVAIL",
  "UND_ERR_CONNECT",
  "EPROTO",
]);
const KIND_BY_CODE: Record<string, string> = {
  UND_ERR_CONNECT_TIMEOUT: "ConnectTimeout",
  ETIMEDOUT: "ConnectTimeout",
  UND_ERR_HEADERS_TIMEOUT: "ReadTimeout",
  UND_ERR_BODY_TIMEOUT: "ReadTimeout",
  UND_ERR_SOCKET: "RemoteProtocolError",
  ECONNRESET: "ReadError",
  EPIPE: "WriteError",
  HPE_INVALID_CONSTANT: "RemoteProtocolError",
  UND_ERR_INVALID_ARG: "UnsupportedProtocol",
};

type Detailed = { code?: unknown; message?: unknown; cause?: unknown; errors?: unknown; host?: unknown };

function chain(err: unknown): Detailed[] {
  const out: Detailed[] = [];
  let current: unknown = err;
  while (current !== null && typeof current === "object" && out.length < 8 && !out.includes(current as Detailed)) {
    const item = current as Detailed;
    out.push(item);
    current = Array.isArray(item.errors) && item.errors.length > 0 ? item.errors[0] : item.cause;
  }
  return out;
}

function codeOf(item: Detailed): string {
  return typeof item.code === "string" ? item.code : "";
}

function tlsWhy(items: Detailed[], hint: string): string | null {
  for (const item of items) {
    const code = codeOf(item);
    if (code === "ERR_TLS_CERT_ALTNAME_INVALID") {
      const host = typeof item.host === "string" ? item.host : "";
      const what = /^[0-9.]+$/.test(host) || host.includes(":") ? "IP address" : "Hostname";
      return `TLS verification failed (${what} mismatch, certificate is not valid for '${host}')`;
    }
    if (VERIFY_CODES.has(code)) {
      const reason = String(item.message ?? "certificate not trusted").replace(/\.+$/, "");
      return `TLS verification failed (${reason}; ${hint})`;
    }
    if (code.startsWith("ERR_SSL_")) return `TLS error (${code.slice("ERR_SSL_".length)})`;
    // node:https says EPROTO with OpenSSL's line: "...:SSL routines:ssl3_get_record:wrong version number:..."
    const openssl = code === "EPROTO" ? /SSL routines:[^:]*:([^:]+):/.exec(String(item.message)) : null;
    if (openssl) return `TLS error (${openssl[1]!.trim().toUpperCase().replace(/ /g, "_")})`;
  }
  return null;
}

/** The httpx class name the Python client would see for this failure. */
export function failureKind(failure: Failure): string {
  const items = chain(failure.error);
  const named = items.find((item) => item instanceof TransportError) as TransportError | undefined;
  if (named) return named.kind;
  if (failure.timedOut) return "ReadTimeout";
  for (const item of items) {
    const code = codeOf(item);
    if (VERIFY_CODES.has(code) || code === "ERR_TLS_CERT_ALTNAME_INVALID" || code.startsWith("ERR_SSL_")) {
      return "ConnectError";
    }
    if (CONNECT_CODES.has(code)) return "ConnectError";
    if (KIND_BY_CODE[code]) return KIND_BY_CODE[code]!;
  }
  // Browsers and React Native say only "Failed to fetch" / "Network request failed".
  return "ConnectError";
}

/** One word or phrase for a failed request; a TLS verification failure says how to fix it. */
export function failureWhy(failure: Failure, hint: string = DEFAULT_CA_HINT): string {
  if (!failure.timedOut) {
    const tls = tlsWhy(chain(failure.error), hint);
    if (tls !== null) return tls;
  }
  return failureKind(failure);
}

/** The transport's own words for a failure (the innermost message). */
export function failureDetail(failure: Failure): string {
  if (failure.timedOut) return "timed out";
  const items = chain(failure.error);
  for (let i = items.length - 1; i >= 0; i--) {
    const message = items[i]!.message;
    if (typeof message === "string" && message) return message;
  }
  return String(failure.error);
}
