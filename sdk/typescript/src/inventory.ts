/**
 * The inventory's entries, parsed as the Python client parses them (runtime/inventory/endpoint.py):
 * the same entries are usable, and a skipped one gets the same one-line reason.
 */

import type { Endpoint, EndpointKind } from "./types.js";
import { hostnameOf, portOf, pyRepr, pyTruthy, pyTypeName, urlSplit } from "./text.js";

export const KIND_LOCAL_ZONE: EndpointKind = "local-zone";
export const KIND_REGION: EndpointKind = "region";
const KINDS: readonly string[] = [KIND_LOCAL_ZONE, KIND_REGION];
export const FALLBACK_LOCATION = "fallback";
const DNS_LABEL = /^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$/;

/** A dotted DNS name of two labels or more whose last is not all digits (never an IP address). */
export function isDnsName(name: string): boolean {
  const labels = name.split(".");
  return name.length <= 253 && labels.length >= 2 && labels.every((l) => DNS_LABEL.test(l)) && !/^[0-9]+$/.test(labels[labels.length - 1]!);
}

/** An entry that cannot be used; the message is one line naming the field and what it needs. */
export class EntryError extends Error {}

/** One entry of `GET /endpoints`; EntryError (one line) when it is not usable. */
export function parseEntry(entry: unknown): Endpoint {
  if (entry === null || typeof entry !== "object" || Array.isArray(entry)) {
    throw new EntryError(`entry is ${pyTypeName(entry)}, not an object`);
  }
  const fields = entry as Record<string, unknown>;
  const strings: Record<string, string> = {};
  for (const name of ["endpoint_id", "url", "location", "accelerator"]) {
    const value = fields[name];
    if (typeof value !== "string" || !value) throw new EntryError(`${name}=${pyRepr(value)}: needs a non-empty string`);
    strings[name] = value;
  }
  const url = strings["url"]!;
  let parts;
  try {
    parts = urlSplit(url);
  } catch (err) {
    throw new EntryError((err as Error).message);
  }
  if ((parts.scheme !== "http" && parts.scheme !== "https") || !hostnameOf(parts)) {
    throw new EntryError(`url=${pyRepr(url)}: needs http(s)://host[:port]`);
  }
  try {
    portOf(parts);
  } catch {
    throw new EntryError(`url=${pyRepr(url)}: bad port`);
  }
  const model = "model" in fields ? fields["model"] : "";
  const cost = "cost_weight" in fields ? fields["cost_weight"] : 0;
  if (typeof cost !== "number") throw new EntryError(`cost_weight=${pyRepr(cost)}: needs a number`);
  const kind = pyTruthy(fields["kind"]) ? fields["kind"] : KIND_LOCAL_ZONE;
  if (typeof kind !== "string" || !KINDS.includes(kind)) {
    throw new EntryError(`kind=${pyRepr(kind)}: allowed ${KINDS.join(", ")}`);
  }
  const serverName = fields["server_name"];
  if (serverName !== undefined && serverName !== null) {
    if (typeof serverName !== "string" || !isDnsName(serverName)) {
      throw new EntryError(`server_name=${pyRepr(serverName)}: needs a DNS name such as lz.example.com`);
    }
    if (parts.scheme !== "https") throw new EntryError(`server_name=${pyRepr(serverName)}: only with an https url`);
  }
  return {
    endpointId: strings["endpoint_id"]!,
    url: url.replace(/\/+$/, ""),
    location: strings["location"]!,
    accelerator: strings["accelerator"]!,
    model: typeof model === "string" ? model : pyRepr(model),
    costWeight: Math.trunc(cost),
    kind: kind as EndpointKind,
    serverName: typeof serverName === "string" ? serverName : null,
  };
}

/** (usable endpoints, one warning per skipped entry) from the API's JSON or a list of entries. */
export function parseInventory(document: unknown): { endpoints: Endpoint[]; skipped: string[] } {
  const isObject = document !== null && typeof document === "object" && !Array.isArray(document);
  const entries = isObject ? (document as Record<string, unknown>)["endpoints"] : document;
  if (!Array.isArray(entries)) {
    return { endpoints: [], skipped: [`inventory has no 'endpoints' list (got ${pyTypeName(entries)})`] };
  }
  const endpoints: Endpoint[] = [];
  const skipped: string[] = [];
  const seen = new Set<string>();
  entries.forEach((entry, index) => {
    let endpoint: Endpoint;
    try {
      endpoint = parseEntry(entry);
    } catch (err) {
      if (!(err instanceof EntryError)) throw err;
      skipped.push(`inventory entry ${index} skipped: ${err.message}`);
      return;
    }
    // The Region's entries share the ALB's URL, one per accelerator: distinct until filtered.
    const key = JSON.stringify([endpoint.url, endpoint.accelerator]);
    if (seen.has(key)) return;
    seen.add(key);
    endpoints.push(endpoint);
  });
  return { endpoints, skipped };
}

/** An app-given URL as an endpoint: tried last, unprobed. */
export function fallbackEndpoint(url: string): Endpoint {
  return parseEntry({
    endpoint_id: `fallback ${url}`,
    url,
    location: FALLBACK_LOCATION,
    accelerator: "any",
    kind: KIND_REGION,
  });
}

export function isRegion(endpoint: Endpoint): boolean {
  return endpoint.kind === KIND_REGION;
}

/** `id (url)`, `id (url, TLS name n)`; a fallback URL's id already is its URL. */
export function described(endpoint: Endpoint): string {
  if (endpoint.endpointId.endsWith(endpoint.url)) return endpoint.endpointId;
  if (endpoint.serverName) return `${endpoint.endpointId} (${endpoint.url}, TLS name ${endpoint.serverName})`;
  return `${endpoint.endpointId} (${endpoint.url})`;
}
