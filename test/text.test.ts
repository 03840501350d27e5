// Streamed text: stop strings held back across token boundaries, UTF-8 characters never split.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { StopMatcher, TextStream } from "../lib/engine/text.js";

describe("text stream", () => {
    it("holds back a possible stop string until it is known, and cuts where it starts", () => {
        const m = new StopMatcher(["</end>", "STOP"]);
        assert.deepEqual(m.push("hello </"), { text: "hello ", stopped: false });
        assert.deepEqual(m.push("en"), { text: "", stopped: false });
        assert.deepEqual(m.push("x more"), { text: "</enx more", stopped: false }, "a false start is released");
        assert.deepEqual(m.push(" ST"), { text: " ", stopped: false });
        assert.deepEqual(m.push("OP and after"), { text: "", stopped: true, stop: "STOP" });
        assert.equal(new StopMatcher(["ab"]).flush(), "");
    });

    it("never splits a multi-byte character, whatever the byte boundaries", () => {
        fc.assert(fc.property(fc.string({ unit: "grapheme", maxLength: 40 }), fc.array(fc.integer({ min: 1, max: 5 }), { minLength: 1, maxLength: 40 }), (text, cuts) => {
            fc.pre(!text.includes("\uFFFD")); // a replacement character in the output must come from a split
            const bytes = new TextEncoder().encode(text);
            const s = new TextStream([]);
            let out = "";
            for (let i = 0, k = 0; i < bytes.length; k++) {
                const n = cuts[k % cuts.length];
                const d = s.push(bytes.subarray(i, i + n)).text;
                assert.ok(!d.includes("\uFFFD"), "no replacement character from a split sequence");
                out += d;
                i += n;
            }
            out += s.end();
            assert.equal(out, text);
        }));
    });

    it("shows exactly the text before the first stop string, however the text is cut into pieces", () => {
        fc.assert(fc.property(fc.string({ maxLength: 30 }), fc.constantFrom("ab", "aab", "\n\n", "xyz"), fc.string({ maxLength: 10 }), fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 1 }), (pre, stop, post, cuts) => {
            const text = pre + stop + post;
            const s = new TextStream([stop]);
            const bytes = new TextEncoder().encode(text);
            let out = "", stopped = false;
            for (let i = 0, k = 0; i < bytes.length && !stopped; k++) {
                const r = s.push(bytes.subarray(i, i + cuts[k % cuts.length]));
                out += r.text;
                stopped = r.stopped;
                i += cuts[k % cuts.length];
            }
            assert.equal(stopped, true);
            assert.equal(out, text.slice(0, text.indexOf(stop)));
        }));
    });
});
