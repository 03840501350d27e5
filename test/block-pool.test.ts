// The KV block pool and prefix-hash index: unit cases, and a property test that drives random
// sequences (shared prefixes, tenants, growth, preemption, ends) and checks the invariants after every step.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { BlockPool, blockHashes, type KvBlock } from "../lib/kv/block-pool.js";

describe("block pool", () => {
    it("allocates, releases and reuses blocks least-recently-released first", () => {
        const pool = new BlockPool(4, 16);
        const a = pool.allocate(3)!;
        assert.deepEqual(a.map((b) => b.id), [0, 1, 2]);
        assert.equal(pool.numFree, 1);
        assert.equal(pool.allocate(2), null, "not enough free blocks");
        pool.release(a); // released tail first: 2, 1, 0 join the free list after 3
        assert.deepEqual(pool.allocate(4)!.map((b) => b.id), [3, 2, 1, 0]);
        pool.checkInvariants();
    });

    it("finds full blocks by content hash after their sequence ends, until evicted", () => {
        const pool = new BlockPool(4, 4);
        const prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        const hashes = blockHashes(prompt, 4);
        assert.equal(hashes.length, 2, "only full blocks are hashed");
        const seq = pool.allocate(3)!;
        pool.commit(seq[0], hashes[0]);
        pool.commit(seq[1], hashes[1]);
        pool.release(seq);
        const hit = pool.match(hashes);
        assert.deepEqual(hit.map((b) => b.id), [seq[0].id, seq[1].id]);
        pool.acquire(hit);
        assert.equal(pool.numFree, 2);
        pool.release(hit);
        assert.deepEqual(pool.match(hashes, 1).map((b) => b.id), [seq[0].id], "limit caps the run");
        assert.deepEqual([pool.stats().queries, pool.stats().hits], [3, 3], "only blocks within the limit are counted");
        // allocating every block evicts the cached contents
        const all = pool.allocate(4)!;
        assert.equal(pool.match(hashes).length, 0);
        assert.equal(pool.stats().evictions, 2);
        pool.release(all);
        pool.checkInvariants();
    });

    it("separates tenants by salt and prefixes by everything before them", () => {
        const a = blockHashes([1, 2, 3, 4, 5, 6, 7, 8], 4);
        assert.notDeepEqual(blockHashes([1, 2, 3, 4, 5, 6, 7, 8], 4, "tenant-b"), a);
        const b = blockHashes([9, 2, 3, 4, 5, 6, 7, 8], 4);
        assert.notEqual(b[1], a[1], "same tokens after a different prefix hash differently");
        assert.deepEqual(blockHashes([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 4, "", a).slice(0, 2), a, "incremental hashing extends");
    });

    it("refuses a double release", () => {
        const pool = new BlockPool(2, 4);
        const b = pool.allocate(1)!;
        pool.release(b);
        assert.throws(() => pool.release(b), /released more often/);
    });

    it("keeps its invariants under random sequences, shared prefixes and preemption", () => {
        const blockSize = 4;
        type Seq = { tokens: number[]; salt: string; blocks: KvBlock[]; hashes: string[] };
        const op = fc.oneof(
            fc.record({ kind: fc.constant("start" as const), prefix: fc.integer({ min: 0, max: 3 }), extra: fc.array(fc.integer({ min: 0, max: 50 }), { maxLength: 12 }), salt: fc.constantFrom("", "t2") }),
            fc.record({ kind: fc.constant("grow" as const), which: fc.nat(), n: fc.integer({ min: 1, max: 9 }) }),
            fc.record({ kind: fc.constant("end" as const), which: fc.nat() }),
        );
        fc.assert(fc.property(fc.integer({ min: 2, max: 24 }), fc.array(op, { maxLength: 60 }), (numBlocks, ops) => {
            const pool = new BlockPool(numBlocks, blockSize);
            const prefixes = [[], [7, 7, 7, 7, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 9, 9, 9, 9]];
            const live: Seq[] = [];
            // what each committed block holds: the whole prefix up to its end, and the salt
            const content = new Map<number, string>();
            const commitFull = (s: Seq, fromBlock: number) => {
                s.hashes = blockHashes(s.tokens, blockSize, s.salt, s.hashes);
                for (let i = fromBlock; i < s.hashes.length; i++) {
                    if (pool.commit(s.blocks[i], s.hashes[i])) content.set(s.blocks[i].id, `${s.salt}|${s.tokens.slice(0, (i + 1) * blockSize)}`);
                }
            };
            for (const o of ops) {
                if (o.kind === "start") {
                    const tokens = [...prefixes[o.prefix], ...o.extra, 99];
                    const hashes = blockHashes(tokens, blockSize, o.salt);
                    // at least the last token is computed, so a full hit stops one block short
                    const hit = pool.match(hashes, Math.floor((tokens.length - 1) / blockSize));
                    hit.forEach((b, i) => assert.equal(content.get(b.id), `${o.salt}|${tokens.slice(0, (i + 1) * blockSize)}`, "a prefix hit returned other content"));
                    pool.acquire(hit);
                    const fresh = pool.allocate(pool.blocksFor(tokens.length) - hit.length);
                    if (!fresh) {
                        pool.release(hit); // not admitted: waits, holding nothing
                    } else {
                        const s: Seq = { tokens, salt: o.salt, blocks: [...hit, ...fresh], hashes: hashes.slice(0, hit.length) };
                        commitFull(s, hit.length);
                        live.push(s);
                    }
                } else if (live.length > 0) {
                    const i = o.which % live.length;
                    const s = live[i];
                    if (o.kind === "end") {
                        pool.release(s.blocks);
                        live.splice(i, 1);
                    } else {
                        const grown = [...s.tokens, ...Array.from({ length: o.n }, (_, k) => 100 + k)];
                        const more = pool.allocate(pool.blocksFor(grown.length) - s.blocks.length);
                        if (!more) { // preempted: gives everything back
                            pool.release(s.blocks);
                            live.splice(i, 1);
                        } else {
                            const before = s.hashes.length;
                            s.tokens = grown;
                            s.blocks.push(...more);
                            commitFull(s, before);
                        }
                    }
                }
                pool.checkInvariants();
                const refs = new Map<number, number>();
                for (const s of live) for (const b of s.blocks) refs.set(b.id, (refs.get(b.id) ?? 0) + 1);
                for (const s of live) for (const b of s.blocks) assert.equal(b.refCount, refs.get(b.id), `block ${b.id} refCount`);
                assert.equal(pool.numFree, numBlocks - refs.size, "every block is held or free, never both");
            }
            for (const s of live) pool.release(s.blocks);
            assert.equal(pool.numFree, numBlocks, "all blocks come back");
            pool.checkInvariants();
        }), { numRuns: 300 });
    });
});
