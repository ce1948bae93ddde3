/**
 * Text and URL rules shared with the Python client (runtime/client), so that both clients accept
 * the same inventory entries and print the same one-line errors: values are quoted as Python's
 * repr() quotes them, URLs are split as Python's urllib.parse.urlsplit splits them, and seconds
 * are written as Python's format(x, "g") writes them.
 */

/** Python's repr() of a JSON value: 'text', 42, None, True, [1, 2], {'a': 1}. */
export function pyRepr(value: unknown): string {
  if (value === null || value === undefined) return "None";
  if (typeof value === "boolean") return value ? "True" : "False";
  if (typeof value === "number") return pyNumber(value);
  if (typeof value === "string") return pyString(value);
  if (Array.isArray(value)) return `[${value.map(pyRepr).join(", ")}]`;
  if (typeof value === "object") {
    const items = Object.entries(value as Record<string, unknown>).map(([k, v]) => `${pyString(k)}: ${pyRepr(v)}`);
    return `{${items.join(", ")}}`;
  }
  return String(value);
}

/** Python's truth value of a JSON value: empty strings, lists and objects are false, as are 0 and None. */
export function pyTruthy(value: unknown): boolean {
  if (Array.isArray(value)) return value.length > 0;
  if (value !== null && typeof value === "object") return Object.keys(value).length > 0;
  return Boolean(value);
}

/** The Python type name of a JSON value, as the Python client's messages name it. */
export function pyTypeName(value: unknown): string {
  if (value === null || value === undefined) return "NoneType";
  if (typeof value === "boolean") return "bool";
  if (typeof value === "number") return Number.isInteger(value) ? "int" : "float";
  if (typeof value === "string") return "str";
  if (Array.isArray(value)) return "list";
  return "dict";
}

function pyNumber(value: number): string {
  if (Number.isNaN(value)) return "nan";
  if (!Number.isFinite(value)) return value > 0 ? "inf" : "-inf";
  if (Number.isInteger(value)) return String(value);
  const text = String(value); // shortest round trip, as Python's float repr
  const match = /^(-?[\d.]+)e([+-])(\d+)$/.exec(text);
  if (match) return `${match[1]}e${match[2]}${match[3]!.padStart(2, "0")}`;
  return text;
}

function pyString(text: string): string {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  let out = quote;
  for (const char of text) {
    const code = char.codePointAt(0)!;
    if (char === "\\") out += "\\\\";
    else if (char === quote) out += `\\${quote}`;
    else if (char === "\n") out += "\\n";
    else if (char === "\r") out += "\\r";
    else if (char === "\t") out += "\\t";
    else if (code < 0x20 || (code >= 0x7f && code < 0xa0)) out += `\\x${code.toString(16).padStart(2, "0")}`;
    else out += char;
  }
  return out + quote;
}

/** Python's format(x, "g"): 120 -> "120", 0.5 -> "0.5", 1234567 -> "1.23457e+06". */
export function formatG(value: number): string {
  if (value === 0) return "0";
  if (!Number.isFinite(value)) return pyNumber(value);
  const [mantissa, exponentText] = value.toExponential(5).split("e") as [string, string];
  const exponent = Number(exponentText);
  const strip = (text: string): string => (text.includes(".") ? text.replace(/0+$/, "").replace(/\.$/, "") : text);
  if (exponent < -4 || exponent >= 6) {
    const sign = exponent < 0 ? "-" : "+";
    return `${strip(mantissa)}e${sign}${String(Math.abs(exponent)).padStart(2, "0")}`;
  }
  return strip(value.toFixed(Math.max(0, 5 - exponent)));
}

/** A URL split the way Python's urlsplit splits it (no normalization beyond what it does). */
export interface UrlParts {
  scheme: string;
  netloc: string;
  path: string;
  query: string;
  fragment: string;
}

const C0_OR_SPACE = /^[\u0000-\u0020]+/;
const SCHEME_CHARS = /^[A-Za-z0-9+\-.]+$/;

/** Python's urllib.parse.urlsplit; throws Error with Python's message on a malformed bracketed host. */
export function urlSplit(input: string): UrlParts {
  let url = input.replace(C0_OR_SPACE, "").replace(/[\t\r\n]/g, "");
  let scheme = "";
  let netloc = "";
  let query = "";
  let fragment = "";
  const colon = url.indexOf(":");
  if (colon > 0 && /^[A-Za-z]/.test(url) && SCHEME_CHARS.test(url.slice(0, colon))) {
    scheme = url.slice(0, colon).toLowerCase();
    url = url.slice(colon + 1);
  }
  if (url.startsWith("//")) {
    let end = url.length;
    for (const stop of "/?#") {
      const at = url.indexOf(stop, 2);
      if (at >= 0) end = Math.min(end, at);
    }
    netloc = url.slice(2, end);
    url = url.slice(end);
    if (netloc.includes("[") !== netloc.includes("]")) throw new Error("Invalid IPv6 URL");
    if (netloc.includes("[")) checkBracketedHost(netloc.split("[")[1]!.split("]")[0]!);
  }
  const hash = url.indexOf("#");
  if (hash >= 0) {
    fragment = url.slice(hash + 1);
    url = url.slice(0, hash);
  }
  const mark = url.indexOf("?");
  if (mark >= 0) {
    query = url.slice(mark + 1);
    url = url.slice(0, mark);
  }
  return { scheme, netloc, path: url, query, fragment };
}

function checkBracketedHost(host: string): void {
  if (host.startsWith("v")) {
    if (!/^v[a-fA-F0-9]+\..+$/.test(host)) throw new Error("IPvFuture address is invalid");
    return;
  }
  if (parseIPv4(host) !== null) throw new Error("An IPv4 address cannot be in brackets");
  if (parseIPv6(host) === null) throw new Error(`${pyRepr(host)} does not appear to be an IPv4 or IPv6 address`);
}

function hostInfo(netloc: string): [string, string | null] {
  const hostinfo = netloc.slice(netloc.lastIndexOf("@") + 1);
  let hostname: string;
  let port: string;
  const open = hostinfo.indexOf("[");
  if (open >= 0) {
    const bracketed = hostinfo.slice(open + 1);
    const close = bracketed.indexOf("]");
    hostname = close >= 0 ? bracketed.slice(0, close) : bracketed;
    const rest = close >= 0 ? bracketed.slice(close + 1) : "";
    const portAt = rest.indexOf(":");
    port = portAt >= 0 ? rest.slice(portAt + 1) : "";
  } else {
    const portAt = hostinfo.indexOf(":");
    hostname = portAt >= 0 ? hostinfo.slice(0, portAt) : hostinfo;
    port = portAt >= 0 ? hostinfo.slice(portAt + 1) : "";
  }
  return [hostname, port === "" ? null : port];
}

/** urlsplit(url).hostname: lowercased (an IPv6 zone kept as written), null when empty. */
export function hostnameOf(parts: UrlParts): string | null {
  const [hostname] = hostInfo(parts.netloc);
  if (!hostname) return null;
  const percent = hostname.indexOf("%");
  return percent >= 0 ? hostname.slice(0, percent).toLowerCase() + hostname.slice(percent) : hostname.toLowerCase();
}

/** urlsplit(url).port: null when absent; throws Error with Python's message when not a port. */
export function portOf(parts: UrlParts): number | null {
  const [, port] = hostInfo(parts.netloc);
  if (port === null) return null;
  if (!/^[0-9]+$/.test(port)) throw new Error(`Port could not be cast to integer value as ${pyRepr(port)}`);
  const value = Number(port);
  if (value > 65535) throw new Error("Port out of range 0-65535");
  return value;
}

/** A dotted-quad IPv4 address as Python's ipaddress reads one (no leading zeros, no short forms). */
export function parseIPv4(text: string): number[] | null {
  const parts = text.split(".");
  if (parts.length !== 4) return null;
  const octets: number[] = [];
  for (const part of parts) {
    if (!/^[0-9]{1,3}$/.test(part) || (part.length > 1 && part.startsWith("0"))) return null;
    const value = Number(part);
    if (value > 255) return null;
    octets.push(value);
  }
  return octets;
}

/** An IPv6 address as eight 16-bit groups, as Python's ipaddress reads one (a dotted-quad tail allowed). */
export function parseIPv6(text: string): number[] | null {
  if (text.includes("%")) return null;
  let tail: number[] = [];
  let head = text;
  const lastColon = text.lastIndexOf(":");
  if (lastColon >= 0 && text.slice(lastColon + 1).includes(".")) {
    const v4 = parseIPv4(text.slice(lastColon + 1));
    if (v4 === null) return null;
    tail = [(v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!];
    const prefix = text.slice(0, lastColon + 1);
    head = prefix.endsWith("::") ? prefix : text.slice(0, lastColon);
  }
  const halves = head.split("::");
  if (halves.length > 2) return null;
  const group = (part: string): number[] | null => {
    if (part === "") return [];
    const values: number[] = [];
    for (const piece of part.split(":")) {
      if (!/^[0-9a-fA-F]{1,4}$/.test(piece)) return null;
      values.push(parseInt(piece, 16));
    }
    return values;
  };
  const want = 8 - tail.length;
  if (halves.length === 1) {
    const all = group(halves[0]!);
    if (all === null || all.length !== want) return null;
    return [...all, ...tail];
  }
  const left = group(halves[0]!);
  const right = group(halves[1]!);
  if (left === null || right === null || left.length + right.length > want - 1) return null;
  return [...left, ...new Array<number>(want - left.length - right.length).fill(0), ...right, ...tail];
}
