/**
 * The Node transport ("@edge-diffusion/client/node"): requests through node:http and node:https,
 * so that a private CA can be trusted per client (`ca`, in addition to Node's roots) and a Local
 * Zone entry's `server_name` is sent as SNI and its certificate verified against that name while
 * the connection goes to the entry's node IP. It also tells a connect timeout from a read timeout.
 *
 *     import { EdgeDiffusionClient } from "@edge-diffusion/client";
 *     import { nodeTransport } from "@edge-diffusion/client/node";
 *     const client = new EdgeDiffusionClient({ ..., transport: nodeTransport({ ca: readFileSync("ca.pem", "utf8") }) });
 */

import * as http from "node:http";
import * as https from "node:https";
import * as tls from "node:tls";

import { TransportError } from "./transport.js";
import type { FetchInit, FetchLike, Transport } from "./types.js";

export interface NodeTransportOptions {
  /** PEM certificates of a private CA, trusted in addition to Node's roots. */
  ca?: string | readonly string[];
  /** Keep connections open between requests (default true): probes then measure the path, not the handshake. */
  keepAlive?: boolean;
}

async function encodedBody(body: FetchInit["body"], url: string): Promise<{ bytes?: Buffer; type?: string }> {
  if (body === undefined) return {};
  if (typeof body === "string") return { bytes: Buffer.from(body) };
  // FormData: let the platform write the multipart body and its boundary.
  const request = new Request(url, { method: "POST", body });
  return { bytes: Buffer.from(await request.arrayBuffer()), type: request.headers.get("content-type") ?? undefined };
}

/** Requests through node:http(s); `withServerName` connects to the URL's host and verifies `serverName`. */
export function nodeTransport(options: NodeTransportOptions = {}): Transport {
  const extra = options.ca === undefined ? [] : typeof options.ca === "string" ? [options.ca] : [...options.ca];
  const ca = extra.length ? [...tls.rootCertificates, ...extra] : undefined;
  const keepAlive = options.keepAlive ?? true;
  const httpAgent = new http.Agent({ keepAlive });
  const httpsAgent = new https.Agent({ keepAlive, ca });

  const send =
    (serverName?: string): FetchLike =>
    async (url, init) => {
      const target = new URL(url);
      const secure = target.protocol === "https:";
      if (!secure && target.protocol !== "http:") throw new TransportError("UnsupportedProtocol", `${target.protocol} URL`);
      if (serverName !== undefined && !secure) throw new TransportError("ConnectError", "a TLS name needs an https URL");
      const { bytes, type } = await encodedBody(init.body, url);
      const headers: Record<string, string> = { ...init.headers };
      if (type) headers["Content-Type"] = type;
      if (bytes) headers["Content-Length"] = String(bytes.length);
      return new Promise<Response>((resolve, reject) => {
        let connected = false;
        const requestOptions: https.RequestOptions = {
          method: init.method,
          host: target.hostname.replace(/^\[(.*)\]$/, "$1"),
          port: target.port || (secure ? 443 : 80),
          path: target.pathname + target.search,
          headers,
          agent: secure ? httpsAgent : httpAgent,
          signal: init.signal,
        };
        if (serverName !== undefined) requestOptions.servername = serverName; // SNI, and the name verified
        const request = (secure ? https : http).request(requestOptions, (response) => {
          const chunks: Buffer[] = [];
          response.on("data", (chunk: Buffer) => chunks.push(chunk));
          response.on("error", (err) => reject(new TransportError("ReadError", err.message, { cause: err })));
          response.on("end", () => {
            const answer = new Headers();
            for (let i = 0; i + 1 < response.rawHeaders.length; i += 2) {
              answer.append(response.rawHeaders[i]!, response.rawHeaders[i + 1]!);
            }
            const status = response.statusCode ?? 0;
            const empty = status === 204 || status === 304;
            resolve(new Response(empty ? null : Buffer.concat(chunks), { status, headers: answer }));
          });
        });
        request.on("socket", (socket) => {
          const ready = secure ? (socket as tls.TLSSocket).authorized === true : !socket.connecting;
          if (ready) connected = true;
          else socket.once(secure ? "secureConnect" : "connect", () => (connected = true));
        });
        request.on("error", (err: Error & { code?: string }) => {
          if (init.signal.aborted) {
            const kind = connected ? "ReadTimeout" : "ConnectTimeout";
            reject(new TransportError(kind, "timed out", { cause: init.signal.reason }));
          } else if (err.code === "ECONNRESET" && !connected) {
            reject(new TransportError("ConnectError", err.message, { cause: err }));
          } else if (err.code === "ECONNRESET" && /socket hang up/.test(err.message)) {
            reject(new TransportError("RemoteProtocolError", "Server disconnected without sending a response.", { cause: err }));
          } else {
            reject(err);
          }
        });
        request.end(bytes);
      });
    };

  return {
    fetch: send(),
    withServerName: (serverName: string) => send(serverName),
    privateCaHint: "a private CA needs nodeTransport({ ca })",
  };
}
