/**
 * The SDK against tests/clients/scenarios.json, the cases the Python client (tests/clients/
 * test_scenarios.py) runs too. Every scenario's endpoints and inventory API are real loopback
 * HTTP(S) servers (world.ts); nothing of the SDK's HTTP layer is replaced.
 *
 * Each scenario runs through nodeTransport (TLS with the test CA, server names); the ones without
 * https run again through the platform's fetch, whose trust store is the process's own
 * (server.test.ts runs the platform fetch over TLS with NODE_EXTRA_CA_CERTS).
 */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { before, describe, test } from "node:test";

import {
  ClientError,
  EdgeDiffusionClient,
  NoEndpointError,
  RequestRejectedError,
  type ClientOptions,
  type GenerationResult,
  type ImageRequest,
  type Transport,
} from "@edge-diffusion/client";
import { nodeTransport } from "@edge-diffusion/client/node";

import { ROOT, makeTls, scratch, testSigner } from "./support.js";
import { World, readTls, type Call, type Scenario, type ScenarioFile, type Tls } from "./world.js";

const FILE = JSON.parse(readFileSync(join(ROOT, "tests", "clients", "scenarios.json"), "utf8")) as ScenarioFile;
const PNG = Buffer.from(FILE.png_base64, "base64");
const ERROR_TYPES: Record<string, new (...args: never[]) => ClientError> = {
  ClientError,
  NoEndpointError,
  RequestRejectedError,
};
const WIRE: Record<string, keyof ImageRequest> = {
  prompt: "prompt",
  negative_prompt: "negativePrompt",
  steps: "steps",
  guidance_scale: "guidanceScale",
  width: "width",
  height: "height",
  seed: "seed",
  num_images: "numImages",
};

let tls: Tls;
before(() => {
  const directory = scratch("tls");
  makeTls(directory);
  tls = readTls(directory);
});

function request(wire: Record<string, unknown>): ImageRequest {
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(wire)) {
    const field = WIRE[name];
    assert.ok(field, `scenario request field ${name} has no SDK name`);
    out[field] = value;
  }
  return out as unknown as ImageRequest;
}

function clientFor(scenario: Scenario, world: World, transport: Transport | undefined, warnings: string[]): EdgeDiffusionClient {
  const given = world.sub(scenario.client ?? {}) as Record<string, unknown>;
  const options: ClientOptions = {
    onWarning: (message) => warnings.push(message),
    now: () => Date.now() + world.offsetS * 1000,
  };
  if (transport) options.transport = transport;
  if (given["fallback_urls"]) options.fallbackUrls = given["fallback_urls"] as string[];
  if (given["token"] !== undefined) options.token = given["token"] as string;
  if (given["filters"]) options.filters = given["filters"] as ClientOptions["filters"];
  if (given["tie_ms"] !== undefined) options.tieMs = given["tie_ms"] as number;
  if (given["probe_timeout_s"] !== undefined) options.probeTimeoutMs = (given["probe_timeout_s"] as number) * 1000;
  const { via, document } = scenario.inventory;
  if (via === "api") {
    options.inventoryUrl = world.urls["inventory"]!;
    options.signer = testSigner({ accessKeyId: "AKIDEXAMPLE", secretAccessKey: "secret" });
    options.region = "us-west-2";
  } else if (via === "document") {
    options.endpoints = world.sub(document);
  } else {
    options.endpoints = world.sub(document["endpoints"] as unknown[]);
  }
  return new EdgeDiffusionClient(options);
}

function check(expect: Record<string, unknown>, world: World, outcome: GenerationResult | ClientError, elapsedS: number, warnings: string[]): void {
  if (outcome instanceof ClientError) {
    assert.ok("error" in expect || "error_matches" in expect, `unexpected error: ${outcome.message}`);
    const type = ERROR_TYPES[(expect["error_type"] as string | undefined) ?? "ClientError"]!;
    assert.ok(outcome instanceof type, `${outcome.name}: ${outcome.message}`);
    if ("error" in expect) assert.equal(outcome.message, expect["error"]);
    if ("error_matches" in expect) assert.match(outcome.message, new RegExp(expect["error_matches"] as string));
    if ("status" in expect) assert.ok(outcome instanceof RequestRejectedError && outcome.status === expect["status"]);
    if ("attempts" in expect) {
      assert.ok(outcome instanceof NoEndpointError);
      assert.deepEqual(outcome.attempts.map((a) => [a.endpoint.endpointId, a.outcome]), expect["attempts"]);
    }
  } else {
    assert.ok(!("error" in expect) && !("error_matches" in expect), `served by ${outcome.endpoint.endpointId}`);
    if ("served_by" in expect) assert.equal(outcome.endpoint.endpointId, expect["served_by"]);
    if ("attempts" in expect) assert.deepEqual(outcome.attempts.map((a) => [a.endpoint.endpointId, a.outcome]), expect["attempts"]);
    if ("seed" in expect) assert.equal(outcome.seed, expect["seed"]);
    if ("images" in expect) {
      assert.equal(outcome.images.length, expect["images"]);
      for (const image of outcome.images) assert.deepEqual(Buffer.from(image), PNG);
    }
  }
  const posts = world.records.filter((r) => r.method === "POST");
  if ("posts" in expect) assert.deepEqual(posts.map((r) => [r.server, r.authorization]), expect["posts"]);
  if ("body" in expect) {
    assert.ok(posts.length > 0);
    for (const post of posts) assert.deepEqual(JSON.parse(post.body.toString()), expect["body"]);
  }
  if ("probed" in expect) {
    const probed = new Set(world.records.filter((r) => r.method === "GET" && r.path === "/healthz").map((r) => r.server));
    assert.deepEqual([...probed].sort(), [...(expect["probed"] as string[])].sort());
  }
  if ("token_calls" in expect) assert.equal(world.tokenCalls, expect["token_calls"]);
  if ("inventory_query" in expect) assert.deepEqual(world.inventoryQueries, [expect["inventory_query"]]);
  for (const part of (expect["warnings"] as string[] | undefined) ?? []) {
    assert.ok(warnings.some((w) => w.includes(part)), `no warning says ${JSON.stringify(part)}: ${JSON.stringify(warnings)}`);
  }
  if ("max_elapsed_s" in expect) assert.ok(elapsedS <= (expect["max_elapsed_s"] as number), `took ${elapsedS.toFixed(2)}s`);
}

async function run(scenario: Scenario, transport?: () => Transport): Promise<void> {
  const world = new World(PNG);
  await world.start(scenario, tls);
  const warnings: string[] = [];
  try {
    const client = clientFor(scenario, world, transport?.(), warnings);
    for (const [index, call] of scenario.calls.entries()) {
      world.reset();
      warnings.length = 0;
      world.offsetS = call.clock_s ?? 0;
      const began = performance.now();
      let outcome: GenerationResult | ClientError;
      try {
        outcome = await client.generate(request(call.request ?? { prompt: "a cat" }), { deadlineMs: (call.deadline_s ?? 10) * 1000 });
      } catch (err) {
        if (!(err instanceof ClientError)) throw err;
        outcome = err;
      }
      const elapsed = (performance.now() - began) / 1000;
      try {
        check(world.sub((call as Call).expect), world, outcome, elapsed, warnings);
      } catch (err) {
        (err as Error).message = `${scenario.name}, call ${index + 1}: ${(err as Error).message}`;
        throw err;
      }
    }
  } finally {
    await world.stop();
  }
}

const usesTls = (scenario: Scenario): boolean => Object.values(scenario.servers).some((s) => s.scheme === "https");

describe("scenarios through nodeTransport", () => {
  for (const scenario of FILE.scenarios) {
    test(scenario.name, () => run(scenario, () => nodeTransport({ ca: tls.ca })));
  }
});

describe("scenarios through the platform's fetch (the default transport)", () => {
  for (const scenario of FILE.scenarios.filter((s) => !usesTls(s))) {
    test(scenario.name, () => run(scenario));
  }
});
