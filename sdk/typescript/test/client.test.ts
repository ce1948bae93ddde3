/**
 * What the SDK does beyond the shared scenarios, over a real loopback server: the request's new
 * fields on the wire (JSON, and multipart/form-data for image bytes), binary answers in every
 * format, cancellation, and the rules the Python client's spelling of URLs and values sets.
 */

import assert from "node:assert/strict";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";

import {
  ClientError,
  EdgeDiffusionClient,
  NoEndpointError,
  carriesCredentials,
  encodeRequest,
  isLoopback,
  parseInventory,
  sniffImage,
  tokenUrlFor,
} from "@edge-diffusion/client";
import { nodeTransport } from "@edge-diffusion/client/node";

const JPEG = Buffer.from([0xff, 0xd8, 0xff, 0xe0, 1, 2, 3]);
const PNG = Buffer.from("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==", "base64");
const WEBP = Buffer.concat([Buffer.from("RIFF"), Buffer.from([9, 0, 0, 0]), Buffer.from("WEBPVP8 ")]);

interface Seen {
  contentType: string;
  body: Buffer;
}

const seen: Seen[] = [];
let hold: (() => void) | null = null;
let base = "";
const server = http.createServer((request, response) => {
  const chunks: Buffer[] = [];
  request.on("data", (chunk: Buffer) => chunks.push(chunk));
  request.on("end", () => {
    if (request.url === "/healthz") return response.end('{"status":"alive"}');
    seen.push({ contentType: request.headers["content-type"] ?? "", body: Buffer.concat(chunks) });
    const wanted = request.headers["content-type"]?.startsWith("application/json")
      ? (JSON.parse(Buffer.concat(chunks).toString()) as { response_format?: string }).response_format
      : "jpeg";
    const answer = (): void => {
      const bodies: Record<string, [string, Buffer]> = { png: ["image/png", PNG], jpeg: ["image/jpeg", JPEG], webp: ["image/webp", WEBP] };
      const [type, bytes] = bodies[wanted ?? "png"] ?? ["application/json", Buffer.from(JSON.stringify({ images: [WEBP.toString("base64")], seed: 4 }))];
      response.writeHead(200, { "Content-Type": type, "X-Seed": "11", "X-Queue-Ms": "2.5", "X-Inference-Ms": "30.1", "X-Batch-Size": "2", "X-Request-Id": "rid-1" });
      response.end(bytes);
    };
    if (hold) hold = answer;
    else answer();
  });
});

before(async () => {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(() => {
  server.close();
  server.closeAllConnections();
});

const client = (): EdgeDiffusionClient => new EdgeDiffusionClient({ fallbackUrls: [base], onWarning: () => undefined });

describe("the request on the wire", () => {
  test("a base64 image prompt goes in JSON with strength, the output format and quality", async () => {
    seen.length = 0;
    await client().generate({ prompt: "a cat", image: "data:image/png;base64,AAAA", strength: 0.4, outputFormat: "webp", quality: 70 });
    assert.equal(seen[0]!.contentType, "application/json");
    assert.deepEqual(JSON.parse(seen[0]!.body.toString()), {
      prompt: "a cat",
      num_images: 1,
      response_format: "json",
      output_format: "webp",
      quality: 70,
      image: "data:image/png;base64,AAAA",
      strength: 0.4,
    });
  });

  for (const [kind, image] of [
    ["Uint8Array", new Uint8Array(PNG)],
    ["ArrayBuffer", new Uint8Array(PNG).buffer],
    ["Blob", new Blob([PNG], { type: "image/png" })],
  ] as const) {
    for (const transport of ["fetch", "nodeTransport"] as const) {
      test(`image bytes (${kind}) go as multipart/form-data, through ${transport}`, async () => {
        seen.length = 0;
        const options = transport === "fetch" ? {} : { transport: nodeTransport() };
        const c = new EdgeDiffusionClient({ fallbackUrls: [base], onWarning: () => undefined, ...options });
        const result = await c.generate({ prompt: "a cat", steps: 4, image, strength: 0.5, responseFormat: "jpeg", quality: 80 });
        assert.equal(result.mediaType, "image/jpeg");
        const { contentType, body } = seen[0]!;
        const boundary = /^multipart\/form-data; boundary=(.+)$/.exec(contentType)?.[1];
        assert.ok(boundary, contentType);
        const parts = new Map<string, { headers: string; value: Buffer }>();
        for (const raw of body.toString("latin1").split(`--${boundary}`).slice(1, -1)) {
          const [headers, ...rest] = raw.slice(2, -2).split("\r\n\r\n");
          const name = /name="([^"]+)"/.exec(headers!)![1]!;
          parts.set(name, { headers: headers!, value: Buffer.from(rest.join("\r\n\r\n"), "latin1") });
        }
        assert.deepEqual([...parts.keys()], ["prompt", "steps", "num_images", "response_format", "quality", "image", "strength"]);
        assert.equal(parts.get("steps")!.value.toString(), "4");
        assert.equal(parts.get("response_format")!.value.toString(), "jpeg");
        assert.match(parts.get("image")!.headers, /filename="image\.png"[\s\S]*Content-Type: image\/png/i);
        assert.deepEqual(parts.get("image")!.value, PNG);
      });
    }
  }

  test("an image prompt of another type is refused in one line before anything is sent", () => {
    assert.throws(() => encodeRequest({ prompt: "a cat", image: 42 as unknown as string }), {
      message: "image: allowed base64 text, a data URL, a Blob, an ArrayBuffer or a Uint8Array",
    });
  });
});

describe("answers", () => {
  for (const format of ["png", "jpeg", "webp"] as const) {
    test(`a binary ${format} answer: one image, and the seed, timings and request id from its headers`, async () => {
      const result = await client().generate({ prompt: "a cat", responseFormat: format });
      assert.equal(result.mediaType, `image/${format}`);
      assert.equal(result.images.length, 1);
      assert.equal(result.seed, 11);
      assert.equal(result.requestId, "rid-1");
      assert.deepEqual(result.serverTimings, { queueMs: 2.5, inferenceMs: 30.1, batchSize: 2 });
    });
  }

  test("JSON images are typed by their bytes", async () => {
    const result = await client().generate({ prompt: "a cat", outputFormat: "webp" });
    assert.equal(result.mediaType, "image/webp");
    assert.equal(result.seed, 4);
    assert.equal(sniffImage(new Uint8Array(JPEG)), "image/jpeg");
  });
});

describe("cancellation and the deadline", () => {
  test("an AbortSignal cancels a request in flight: the promise rejects with its reason, nothing else is tried", async () => {
    seen.length = 0;
    hold = () => undefined;
    const controller = new AbortController();
    const c = new EdgeDiffusionClient({ fallbackUrls: [base, base + "/"], onWarning: () => undefined });
    const pending = c.generate({ prompt: "a cat" }, { signal: controller.signal });
    while (seen.length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
    controller.abort(new Error("left the scene"));
    await assert.rejects(pending, { message: "left the scene" });
    assert.equal(seen.length, 1);
    hold = null;
  });

  test("an already aborted signal sends nothing", async () => {
    seen.length = 0;
    const controller = new AbortController();
    controller.abort(new Error("never mind"));
    await assert.rejects(client().generate({ prompt: "a cat" }, { signal: controller.signal }), { message: "never mind" });
    assert.equal(seen.length, 0);
  });

  test("a deadline that is not a positive number is one line", async () => {
    await assert.rejects(client().generate({ prompt: "a cat" }, { deadlineMs: 0 }), {
      name: "ClientError",
      message: "deadlineMs 0: allowed a positive number of milliseconds",
    });
  });
});

describe("the Python client's rules, as written", () => {
  test("loopback is 127.0.0.0/8, ::1 or localhost as written", () => {
    for (const host of ["127.0.0.1", "127.9.8.7", "localhost", "LOCALHOST", "::1", "0:0:0:0:0:0:0:1", "::0.0.0.1"]) assert.ok(isLoopback(host), host);
    for (const host of ["127.1", "127.000.0.1", "::ffff:127.0.0.1", "0.0.0.0", "10.0.0.1", "localhost.example.com", ""]) assert.ok(!isLoopback(host), host);
  });

  test("a token goes over https, or plain http to loopback, and no spelling connects elsewhere", () => {
    for (const url of ["https://example.com", "http://127.0.0.1:8080", "http://localhost/", "http://[::1]:7860"]) assert.ok(carriesCredentials(url), url);
    for (const url of [
      "http://example.com",
      "http://127.1:8080",
      "http://0.0.0.0:80",
      "http://evil.example\\@127.0.0.1/", // urlsplit reads 127.0.0.1; fetch would connect to evil.example
      "ftp://127.0.0.1",
      "not a url",
    ]) {
      assert.ok(!carriesCredentials(url), url);
    }
  });

  test("the token route sits beside the inventory route", () => {
    assert.equal(tokenUrlFor("https://abc.execute-api.us-west-2.amazonaws.com/v1/endpoints?x=1"), "https://abc.execute-api.us-west-2.amazonaws.com/v1/token");
  });

  test("entry values are quoted as Python quotes them, IPv6 brackets checked as Python checks them", () => {
    const { endpoints, skipped } = parseInventory([
      { endpoint_id: "a", url: "http://[::1]:80", location: "l", accelerator: "x" },
      { endpoint_id: "b", url: "http://[127.0.0.1]:80", location: "l", accelerator: "x" },
      { endpoint_id: "c", url: "http://h:1:2", location: "l", accelerator: "x" },
      { endpoint_id: "d", url: 'say "hi"', location: "l", accelerator: "x" },
      { endpoint_id: "e", url: "http://h/", location: "l", accelerator: "x", cost_weight: true },
    ]);
    assert.deepEqual(endpoints.map((e) => e.url), ["http://[::1]:80"]);
    assert.deepEqual(skipped, [
      "inventory entry 1 skipped: An IPv4 address cannot be in brackets",
      "inventory entry 2 skipped: url='http://h:1:2': bad port",
      "inventory entry 3 skipped: url='say \"hi\"': needs http(s)://host[:port]",
      "inventory entry 4 skipped: cost_weight=True: needs a number",
    ]);
  });

  test("options that cannot work are refused when the client is made", () => {
    assert.throws(() => new EdgeDiffusionClient({}), { message: "give one of inventoryUrl or endpoints, or fallbackUrls" });
    assert.throws(() => new EdgeDiffusionClient({ inventoryUrl: "http://inventory.example/v1/endpoints" }), {
      message:
        "inventory URL 'http://inventory.example/v1/endpoints' refused: its answer decides where tokens go; allowed: https, or http to a loopback address (127.0.0.0/8, ::1, localhost) for development",
    });
    assert.throws(() => new EdgeDiffusionClient({ fallbackUrls: ["ftp://x"] }), {
      message: "fallback URL 'ftp://x' is not usable: url='ftp://x': needs http(s)://host[:port]",
    });
    assert.throws(() => new EdgeDiffusionClient({ fallbackUrls: [base], filters: { zone: "x" } as never }), {
      message: "filter 'zone': allowed model, location, accelerator",
    });
  });

  test("an inventory URL without a signer says so, and the fallback URLs still serve", async () => {
    const warnings: string[] = [];
    const c = new EdgeDiffusionClient({ inventoryUrl: "https://abc.execute-api.us-west-2.amazonaws.com/v1/endpoints", fallbackUrls: [base], onWarning: (m) => warnings.push(m) });
    const result = await c.generate({ prompt: "a cat" });
    assert.equal(result.endpoint.endpointId, `fallback ${base}`);
    assert.ok(warnings.includes("no signer to sign the inventory request (IAM auth): pass signer; trying the fallback URLs"), JSON.stringify(warnings));
    const alone = new EdgeDiffusionClient({ inventoryUrl: "https://abc.execute-api.us-west-2.amazonaws.com/v1/endpoints" });
    await assert.rejects(alone.generate({ prompt: "a cat" }), (err: unknown) => err instanceof ClientError && !(err instanceof NoEndpointError));
  });
});
