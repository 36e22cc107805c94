// Calling alignd through its OpenAI-compatible HTTP API with the official `openai` npm package.
// Start the server with `make serve` (HTTP on port 8000), then: npm ci && node chat.mjs
// ALIGND_URL overrides the address (default http://127.0.0.1:8000/v1).
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.ALIGND_URL ?? "http://127.0.0.1:8000/v1",
  apiKey: "unused", // alignd has no keys yet; the SDK insists on one
  maxRetries: 0,
});
const model = "smollm2-135m-instruct";
const messages = [{ role: "user", content: "Give one tip for staying focused." }];

// The strategy, its parameters and this user's preference weights go in the `alignd` object;
// the SDK sends fields it does not know as they are.
const answer = await client.chat.completions.create({
  model,
  messages,
  max_tokens: 24,
  alignd: { strategy: "best_of_n", params: { n: 4 }, weights: { relevance: 0.7, conciseness: 0.3 } },
});
console.log(`answer: ${answer.choices[0].message.content}`);
console.log(`rewards: ${JSON.stringify(answer.alignd.rewards)}`);
console.log(`kl: ${answer.alignd.kl.map((k) => `${k.name}=${k.nats.toFixed(3)}`).join(" ")}`);

// Streaming: controlled decoding sends each chosen block as soon as it is chosen.
const stream = await client.chat.completions.create({
  model,
  messages,
  max_tokens: 24,
  stream: true,
  alignd: { strategy: "controlled", params: { num_candidates: 2, block_tokens: 8 } },
});
let text = "";
for await (const chunk of stream) {
  const piece = chunk.choices[0]?.delta?.content ?? "";
  if (piece) process.stdout.write(`block: ${JSON.stringify(piece)}\n`);
  text += piece;
}
console.log(`streamed: ${text}`);
