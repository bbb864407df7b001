// The official Node `openai` SDK against the gateway's Responses API, unchanged: run by
// bench/sdk_clients.sh (NODE_PATH names the folder the SDK was installed in).
//   node bench/sdk_clients.cjs BASE_URL API_KEY MODEL...
// For each model: responses.create plain and streamed, a function tool round trip with
// previous_response_id, retrieve, input_items.list, delete (then retrieve is a 404).
// Prints one line per check; exits 1 if any failed.
"use strict";
const OpenAI = require("openai");

const [baseURL, apiKey, ...models] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const weather = {
  type: "function",
  name: "get_weather",
  description: "Weather for a city",
  parameters: {
    type: "object",
    properties: { city: { type: "string" } },
    required: ["city"],
    additionalProperties: false,
  },
  strict: true,
};
let failed = 0;

async function check(model, what, fn) {
  try {
    const detail = await fn();
    console.log(`ok   ${model} ${what}: ${detail}`);
  } catch (err) {
    failed += 1;
    console.log(`FAIL ${model} ${what}: ${err && err.stack ? err.stack.split("\n")[0] : err}`);
  }
}

function expect(cond, message) {
  if (!cond) throw new Error(message);
}

async function run(model) {
  let plain;
  await check(model, "responses.create", async () => {
    plain = await client.responses.create({ model, input: "Say hello" });
    expect(plain.status === "completed" && plain.output_text, "no text");
    return JSON.stringify(plain.output_text);
  });
  await check(model, "responses.create stream", async () => {
    const stream = await client.responses.create({ model, input: "Say hello", stream: true });
    const kinds = [];
    let text = "";
    for await (const ev of stream) {
      kinds.push(ev.type);
      if (ev.type === "response.output_text.delta") text += ev.delta;
    }
    expect(kinds[0] === "response.created", `first event ${kinds[0]}`);
    expect(kinds[kinds.length - 1] === "response.completed", `last event ${kinds.at(-1)}`);
    expect(kinds.includes("response.output_item.done") && text, "no item done or no text");
    return `${kinds.length} events, ${JSON.stringify(text)}`;
  });
  await check(model, "function tool round trip with previous_response_id", async () => {
    const first = await client.responses.create({ model, input: "Weather in Paris?", tools: [weather] });
    const call = first.output.find((item) => item.type === "function_call");
    expect(call && call.name === "get_weather", "no function call");
    const second = await client.responses.create({
      model,
      previous_response_id: first.id,
      input: [{ type: "function_call_output", call_id: call.call_id, output: '{"temp_c": 21}' }],
      tools: [weather],
    });
    expect(second.output_text, "no answer after the tool output");
    return `call ${call.name}(${call.arguments}) then ${JSON.stringify(second.output_text)}`;
  });
  await check(model, "retrieve, input_items.list, delete", async () => {
    expect(plain, "no response to look up");
    const got = await client.responses.retrieve(plain.id);
    expect(got.id === plain.id && got.output_text === plain.output_text, "retrieve differs");
    const items = [];
    for await (const item of client.responses.inputItems.list(plain.id)) items.push(item);
    expect(items.length === 1 && items[0].type === "message", `input items ${JSON.stringify(items)}`);
    const deleted = await client.responses.delete(plain.id);
    let gone = false;
    try {
      await client.responses.retrieve(plain.id);
    } catch (err) {
      gone = err instanceof OpenAI.NotFoundError;
    }
    expect(gone, "still there after delete");
    return `retrieved, ${items.length} input item, deleted ${JSON.stringify(deleted ?? null)}, then 404`;
  });
}

(async () => {
  for (const model of models) await run(model);
  console.log(failed ? `${failed} check(s) failed` : "all checks passed");
  process.exit(failed ? 1 : 0);
})();
