/** The shapes the SDK speaks: inventory entries, image requests and results, and what the app plugs in. */

export type EndpointKind = "local-zone" | "region";

/** One endpoint from the inventory (or a fallback URL), parsed and checked. */
export interface Endpoint {
  readonly endpointId: string;
  /** http(s)://host[:port], without a trailing slash. */
  readonly url: string;
  /** Region or Local Zone name (`fallback` for a fallback URL). */
  readonly location: string;
  readonly accelerator: string;
  readonly model: string;
  /** Higher is cheaper: breaks latency ties. */
  readonly costWeight: number;
  readonly kind: EndpointKind;
  /** The DNS name its certificate names, sent as SNI and verified instead of the URL's host (https only). */
  readonly serverName: string | null;
}

export interface Probe {
  readonly endpoint: Endpoint;
  /** Best round trip of `GET /healthz` in milliseconds; null: unreachable or unhealthy. */
  readonly rttMs: number | null;
  readonly error: string | null;
}

export interface Attempt {
  readonly endpoint: Endpoint;
  /** "ok", "429", "503", "timeout", "connection error: ...", "bad response: ...", "401: token renewed". */
  readonly outcome: string;
  readonly ms: number;
}

export type ImageFormat = "png" | "jpeg" | "webp";
export type ResponseFormat = ImageFormat | "json";

/** An image prompt: base64 text or a data URL (sent in JSON), or bytes (sent as multipart/form-data). */
export type ImageInput = string | Blob | ArrayBuffer | Uint8Array;

/** The fields of `POST /v1/images`; undefined leaves the server's default. */
export interface ImageRequest {
  prompt: string;
  negativePrompt?: string;
  steps?: number;
  guidanceScale?: number;
  width?: number;
  height?: number;
  seed?: number;
  /** Default 1. More than one needs responseFormat "json" (the default). */
  numImages?: number;
  /** "json" (default: every image, the seed and the server's timings) or one binary image. */
  responseFormat?: ResponseFormat;
  /** The encoding of the images inside a JSON answer. */
  outputFormat?: ImageFormat;
  /** 1-100, for jpeg and webp. */
  quality?: number;
  /** An image prompt: base64 or a data URL goes in JSON, bytes go as a multipart file part. */
  image?: ImageInput;
  /** How far to move away from the image prompt: 0 < strength <= 1. */
  strength?: number;
}

export interface ServerTimings {
  queueMs: number | null;
  inferenceMs: number | null;
  batchSize: number | null;
}

export interface GenerationResult {
  /** The encoded images (PNG unless another format was asked for). */
  readonly images: Uint8Array[];
  /** image/png, image/jpeg or image/webp. */
  readonly mediaType: string;
  readonly endpoint: Endpoint;
  readonly attempts: readonly Attempt[];
  readonly probes: readonly Probe[];
  /** Milliseconds spent reading the inventory, probing, generating, and in all. */
  readonly timings: { inventoryMs: number; probeMs: number; generateMs: number; totalMs: number };
  readonly seed: number | null;
  readonly requestId: string | null;
  readonly serverTimings: ServerTimings;
  /** One line per inventory entry that could not be used. */
  readonly skippedEntries: readonly string[];
}

/** A request for the app's signer to sign (SigV4 for the inventory API, service execute-api). */
export interface SignableRequest {
  method: "GET";
  /** The full URL, query included. */
  url: string;
  headers: Record<string, string>;
  region: string;
  service: "execute-api";
}

/** Signs an inventory or token request: returns the headers to send (Authorization, X-Amz-Date, ...). */
export type Signer = (request: SignableRequest) => Promise<Record<string, string>>;

/** What `fetch` needs of a request here: a subset of RequestInit every platform's fetch takes. */
export interface FetchInit {
  method: "GET" | "POST";
  headers: Record<string, string>;
  body?: string | FormData;
  signal: AbortSignal;
}

export type FetchLike = (url: string, init: FetchInit) => Promise<Response>;

/**
 * How requests leave the device. `fetch` carries every request; `withServerName`, when the
 * platform can do it (Node: `nodeTransport` from "@edge-diffusion/client/node"), carries the
 * requests to an entry whose certificate names a DNS name other than its URL's host. Without it,
 * such entries are skipped (browsers and React Native cannot choose the TLS server name).
 */
export interface Transport {
  fetch: FetchLike;
  withServerName?: (serverName: string) => FetchLike;
  /** What a failed TLS verification suggests for a private CA. */
  privateCaHint?: string;
}

export type InventoryFilters = Partial<Record<"model" | "location" | "accelerator", string>>;

export interface ClientOptions {
  /** The InventoryStack's InventoryUrl (https, or http to loopback): needs `signer`; its /token route issues tokens. */
  inventoryUrl?: string;
  /** Entries already fetched, or an inventory document as the API answers it (its `auth` is honoured). */
  endpoints?: readonly unknown[] | Record<string, unknown>;
  /** Endpoints tried last, unprobed; they work with no inventory at all. */
  fallbackUrls?: readonly string[];
  filters?: InventoryFilters;
  /** Signs inventory and token requests (SigV4): see the README for @aws-sdk/signature-v4 and Cognito. */
  signer?: Signer;
  /** The inventory API's Region (default: its execute-api URL's). */
  region?: string;
  /** A bearer token to send instead of fetching one. */
  token?: string;
  /** The token route (default: /token beside the inventory URL). */
  tokenUrl?: string;
  /** Per probe of GET /healthz; default 2000. */
  probeTimeoutMs?: number;
  /** Round trips within this many milliseconds tie, and the cheaper accelerator wins; default 5. */
  tieMs?: number;
  transport?: Transport;
  /** Where warnings go (default: console.warn). */
  onWarning?: (message: string) => void;
  /** Wall clock in milliseconds since the epoch, for token expiry (default Date.now). */
  now?: () => number;
}

export interface GenerateOptions {
  /** Total milliseconds for the inventory, probes and every failover; default 120000. */
  deadlineMs?: number;
  /** Cancels the generation at once: the promise rejects with the signal's reason. */
  signal?: AbortSignal;
}
