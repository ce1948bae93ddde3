/**
 * @edge-diffusion/client: the device SDK of Edge Diffusion for WebXR pages, React Native apps and
 * Node. It reads the endpoint inventory, probes the endpoints, generates on the nearest healthy
 * one and fails over within one deadline, as the Python client (runtime/client) does. No runtime
 * dependencies: the platform's fetch and AbortController; SigV4 signing is the app's signer.
 */

export { EdgeDiffusionClient, DEFAULT_DEADLINE_MS, DEFAULT_PROBE_TIMEOUT_MS, DEFAULT_TIE_MS, isRetryable, rank } from "./client.js";
export { ClientError, NoEndpointError, RequestRejectedError, TokenError } from "./errors.js";
export { CREDENTIAL_URLS, TokenSource, carriesCredentials, isLoopback, regionOf, tokenExpiry, tokenUrlFor } from "./auth.js";
export { described, fallbackEndpoint, isDnsName, parseEntry, parseInventory } from "./inventory.js";
export { encodeRequest, sniffImage } from "./request.js";
export { TransportError, fetchTransport } from "./transport.js";
export type {
  Attempt,
  ClientOptions,
  Endpoint,
  EndpointKind,
  FetchInit,
  FetchLike,
  GenerateOptions,
  GenerationResult,
  ImageFormat,
  ImageInput,
  ImageRequest,
  InventoryFilters,
  Probe,
  ResponseFormat,
  ServerTimings,
  SignableRequest,
  Signer,
  Transport,
} from "./types.js";
