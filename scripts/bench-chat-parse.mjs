#!/usr/bin/env node
// The chat parser's cost against the output's length: a tool-calling template's parser fed one 4-character piece
// at a time (each update a parse of all the text so far), against the engine's stream reader (MessageReader, which
// spaces costly parses out: pieces arrive every --interval ms of simulated time, the parses take real time), and
// against the whole text once (ChatOptions.messageDeltas false, the server's non-streamed requests). CPU only;
// vocab-only model, no weights.
//   npm run build && node scripts/bench-chat-parse.mjs [--template Qwen3-Coder.jinja] [--chars 4000,16000,32000] [--interval 16]
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ChatParser, ChatTemplates, LlamaModel, vocabDir } from "../dist/lib/binding/index.js";
import { MessageReader } from "../dist/lib/engine/chat.js";

const { values: args } = parseArgs({ options: { template: { type: "string", default: "Qwen3-Coder.jinja" }, chars: { type: "string", default: "4000,16000,32000" }, interval: { type: "string", default: "16" } } });
const interval = Number(args.interval);
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
    // the stream reader: simulated time passes `interval` ms between pieces, real time inside the parses
    let offset = 0, lag = 0, waitingSince = -1, reads = 0;
    const clock = () => performance.now() + offset;
    const reader = new MessageReader({ spec: r.parser, parseToolCalls: true, isContinuation: false, deltas: true }, clock);
    t0 = performance.now();
    for (let i = 0; i < text.length; i += 4) {
        offset += interval;
        if (waitingSince < 0) waitingSince = clock();
        if (reader.update(text.slice(i, i + 4), false).length > 0 || i + 4 >= text.length) {
            lag = Math.max(lag, clock() - waitingSince);
            waitingSince = -1;
            reads++;
        }
    }
    reader.update("", true);
    const streamed = performance.now() - t0;
    p = ChatParser.create(r.parser);
    t0 = performance.now();
    p.update(text, false);
    const once = performance.now() - t0;
    console.log(`${args.template}: ${text.length} characters in ${Math.ceil(text.length / 4)} pieces: every piece ${pieces.toFixed(1)} ms; ` +
        `stream reader ${streamed.toFixed(1)} ms (${reads} reads, a piece waited ${lag.toFixed(0)} ms at most); at once ${once.toFixed(2)} ms`);
}
model.dispose();
