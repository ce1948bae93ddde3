/**
 * The body of `POST /v1/images` and its answer: JSON, or multipart/form-data when the image
 * prompt is bytes; the images back from a binary answer (PNG, JPEG, WebP, with the X-Seed,
 * X-Queue-Ms, X-Inference-Ms, X-Batch-Size and X-Request-Id headers) or a JSON one.
 */

import { ClientError } from "./errors.js";
import { pyRepr, pyTruthy } from "./text.js";
import type { ImageInput, ImageRequest, ServerTimings } from "./types.js";

export const IMAGES_PATH = "/v1/images";
export const HEALTH_PATH = "/healthz";
export const REQUEST_ID_HEADER = "X-Request-Id";
export const MEDIA_TYPES: Record<string, string> = { png: "image/png", jpeg: "image/jpeg", webp: "image/webp" };
const IMAGE_MEDIA_TYPES = new Set(Object.values(MEDIA_TYPES));

/** The wire names of the request's fields, in the order the Python client sends them. */
const WIRE: ReadonlyArray<[keyof ImageRequest, string]> = [
  ["prompt", "prompt"],
  ["negativePrompt", "negative_prompt"],
  ["steps", "steps"],
  ["guidanceScale", "guidance_scale"],
  ["width", "width"],
  ["height", "height"],
  ["seed", "seed"],
  ["numImages", "num_images"],
  ["responseFormat", "response_format"],
  ["outputFormat", "output_format"],
  ["quality", "quality"],
  ["image", "image"],
  ["strength", "strength"],
];

export interface EncodedRequest {
  body: string | FormData;
  headers: Record<string, string>;
}

function isBytes(value: unknown): value is Blob | ArrayBuffer | Uint8Array {
  return (
    value instanceof ArrayBuffer ||
    value instanceof Uint8Array ||
    (typeof Blob !== "undefined" && value instanceof Blob)
  );
}

/** The media type of encoded image bytes, from their first bytes. */
export function sniffImage(bytes: Uint8Array): string | null {
  const starts = (...magic: number[]): boolean => magic.every((b, i) => bytes[i] === b);
  if (starts(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a)) return "image/png";
  if (starts(0xff, 0xd8, 0xff)) return "image/jpeg";
  if (starts(0x52, 0x49, 0x46, 0x46) && String.fromCharCode(...bytes.subarray(8, 12)) === "WEBP") return "image/webp";
  return null;
}

function imagePart(image: Blob | ArrayBuffer | Uint8Array): [Blob, string] {
  if (typeof Blob !== "undefined" && image instanceof Blob) {
    const extension = Object.entries(MEDIA_TYPES).find(([, type]) => type === image.type)?.[0];
    return [image, extension ? `image.${extension}` : "image"];
  }
  const bytes = image instanceof Uint8Array ? image : new Uint8Array(image as ArrayBuffer);
  const type = sniffImage(bytes);
  const extension = Object.entries(MEDIA_TYPES).find(([, t]) => t === type)?.[0];
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return [new Blob([copy], { type: type ?? "application/octet-stream" }), extension ? `image.${extension}` : "image"];
}

/** The request as JSON, or as multipart/form-data when its image prompt is bytes. */
export function encodeRequest(request: ImageRequest): EncodedRequest {
  if (request === null || typeof request !== "object" || typeof request.prompt !== "string") {
    throw new ClientError(`request ${pyRepr(request as unknown)}: needs a prompt string`);
  }
  const image: ImageInput | undefined = request.image;
  if (image !== undefined && typeof image !== "string" && !isBytes(image)) {
    throw new ClientError("image: allowed base64 text, a data URL, a Blob, an ArrayBuffer or a Uint8Array");
  }
  const fields: Array<[string, unknown]> = [];
  for (const [name, wire] of WIRE) {
    let value: unknown = request[name];
    if (name === "numImages" && value === undefined) value = 1;
    if (name === "responseFormat" && value === undefined) value = "json"; // every image, the seed and the timings
    if (value !== undefined && value !== null) fields.push([wire, value]);
  }
  if (image === undefined || typeof image === "string") {
    return { body: JSON.stringify(Object.fromEntries(fields)), headers: { "Content-Type": "application/json" } };
  }
  const form = new FormData();
  for (const [wire, value] of fields) {
    if (wire === "image") {
      const [blob, filename] = imagePart(image);
      form.append("image", blob, filename);
    } else {
      form.append(wire, String(value));
    }
  }
  return { body: form, headers: {} }; // fetch writes the multipart Content-Type with its boundary
}

/** A 200 whose body holds no usable image: the next endpoint is tried. */
export class BadResponse extends Error {}

export interface Decoded {
  images: Uint8Array[];
  mediaType: string;
  seed: number | null;
  requestId: string | null;
  timings: ServerTimings;
}

function intOrNull(value: string | null): number | null {
  return value !== null && /^\s*[+-]?\d+\s*$/.test(value) ? Number(value) : null;
}

function numberOrNull(value: unknown): number | null {
  if (typeof value === "number") return value;
  if (typeof value === "string" && value.trim() !== "" && Number.isFinite(Number(value))) return Number(value);
  return null;
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

function decodeBase64(text: unknown): Uint8Array {
  if (typeof text !== "string" || text.length % 4 !== 0 || !BASE64.test(text)) throw new BadResponse("images are not base64");
  const binary = atob(text);
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

/** The images of a 200 answer: binary (one image, meta in headers) or JSON (base64 images). */
export function decodeImages(headers: Headers, bytes: Uint8Array): Decoded {
  const kind = (headers.get("content-type") ?? "").split(";")[0]!.trim();
  const headerId = headers.get(REQUEST_ID_HEADER);
  if (IMAGE_MEDIA_TYPES.has(kind)) {
    return {
      images: [bytes],
      mediaType: kind,
      seed: intOrNull(headers.get("X-Seed")),
      requestId: headerId,
      timings: {
        queueMs: numberOrNull(headers.get("X-Queue-Ms")),
        inferenceMs: numberOrNull(headers.get("X-Inference-Ms")),
        batchSize: intOrNull(headers.get("X-Batch-Size")),
      },
    };
  }
  if (kind !== "application/json") throw new BadResponse(`unexpected content type ${kind || "none"}`);
  let body: unknown;
  try {
    body = JSON.parse(new TextDecoder().decode(bytes));
  } catch (err) {
    throw new BadResponse(`not JSON (${(err as Error).message})`);
  }
  const fields = body !== null && typeof body === "object" && !Array.isArray(body) ? (body as Record<string, unknown>) : {};
  const encoded = fields["images"];
  if (!Array.isArray(encoded) || encoded.length === 0) throw new BadResponse("no images in the response");
  const images = encoded.map(decodeBase64);
  const timings = (fields["timings"] ?? {}) as Record<string, unknown>;
  const seed = fields["seed"];
  const requestId = fields["request_id"];
  return {
    images,
    mediaType: sniffImage(images[0]!) ?? "image/png",
    seed: typeof seed === "number" && Number.isInteger(seed) ? seed : null,
    requestId: headerId || (typeof requestId === "string" ? requestId : null),
    timings: {
      queueMs: numberOrNull(timings["queue_ms"]),
      inferenceMs: numberOrNull(timings["inference_ms"]),
      batchSize: numberOrNull(timings["batch_size"]),
    },
  };
}

/** What an error answer says: {"error", "field", "request_id"} as one line (at most 300 characters). */
export function errorMessage(headers: Headers, text: string): { message: string; field: string | null; requestId: string | null } {
  let message: unknown = text;
  let field: string | null = null;
  let requestId: string | null = headers.get(REQUEST_ID_HEADER);
  try {
    const body: unknown = JSON.parse(text);
    message = body;
    if (body !== null && typeof body === "object" && !Array.isArray(body)) {
      const fields = body as Record<string, unknown>;
      message = pyTruthy(fields["error"]) ? fields["error"] : pyTruthy(fields["detail"]) ? fields["detail"] : body;
      if (typeof fields["field"] === "string") field = fields["field"];
      if (!requestId && typeof fields["request_id"] === "string") requestId = fields["request_id"];
    }
  } catch {
    message = text;
  }
  const shown = typeof message === "string" ? message : pyRepr(message);
  return { message: shown.split(/\s+/).filter(Boolean).join(" ").slice(0, 300), field, requestId };
}
