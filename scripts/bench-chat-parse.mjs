#!/usr/bin/env node
// The chat parser's cost against the output's length: a tool-calling template's parser fed one 4-character piece
// at a time (as a stream's deltas are read, each update a parse of all the text so far) against the whole text once
// (ChatOptions.messageDeltas false, the server's non-streamed requests). CPU only; vocab-only model, no weights.
//   npm run build && node scripts/bench-chat-parse.mjs [--template Qwen3-Coder.jinja] [--chars 4000,16000,32000]
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ChatParser, ChatTemplates, LlamaModel, vocabDir } from "../dist/lib/binding/index.js";

const { values: args } = parseArgs({ options: { template: { type: "string", default: "Qwen3-Coder.jinja" }, chars: { type: "string", default: "4000,16000,32000" } } });
const model = await LlamaModel.load(join(vocabDir(), "ggml-vocab-qwen2.gguf"), { vocabOnly: true });
const ct = ChatTemplates.create(model, { template: readFileSync(join(vocabDir(), "templates", args.template), "utf8") });
const tool = { type: "function", function: { name: "write_file", parameters: { type: "object", properties: { path: { type: "string" } } } } };
const r = ct.apply({ messages: [{ role: "user", content: "hi" }], tools: [tool] });
for (const chars of args.chars.split(",").map(Number)) {
    const text = Array.from({ length: Math.ceil(chars / 4) }, (_, i) => ["def ", "foo", "(x):", "\n   "][i % 4]).join("");
    let p = ChatParser.create(r.parser);
    let t0 = performance.now();
    for (let i = 0; i < text.length; i += 4) p.update(text.slice(i, i + 4), true);
    p.update("", false);
    const pieces = performance.now() - t0;
    p = ChatParser.create(r.parser);
    t0 = performance.now();
    p.update(text, false);
    const once = performance.now() - t0;
    console.log(`${args.template}: ${text.length} characters in ${Math.ceil(text.length / 4)} pieces ${pieces.toFixed(1)} ms, ` +
        `at once ${once.toFixed(2)} ms (${(pieces / once).toFixed(0)}x)`);
}
model.dispose();
