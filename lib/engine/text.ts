// Token bytes to streamed text: whole UTF-8 characters only, and never text that a stop string will
// take back.

/**
 * Finds stop strings in streamed text. push() returns the text that is safe to show now: it holds back
 * any tail that could be the start of a stop string, and cuts the text where a stop string begins.
 */
export class StopMatcher {
    private held = "";
    private readonly stops: string[];

    constructor(stops: readonly string[]) {
        this.stops = stops.filter((s) => s.length > 0);
    }

    /** The text safe to show now, and, when a stop string ended it, that string (`stop`; the first given of those that begin earliest). */
    push(text: string): { text: string; stopped: boolean; stop?: string } {
        if (this.stops.length === 0) return { text, stopped: false };
        const s = this.held + text;
        let at = -1;
        let found = "";
        for (const stop of this.stops) {
            const i = s.indexOf(stop);
            if (i >= 0 && (at < 0 || i < at)) {
                at = i;
                found = stop;
            }
        }
        if (at >= 0) {
            this.held = "";
            return { text: s.slice(0, at), stopped: true, stop: found };
        }
        // hold back the longest tail of s that is a proper prefix of a stop string
        let keep = 0;
        for (const stop of this.stops) {
            for (let k = Math.min(stop.length - 1, s.length); k > keep; k--) {
                if (s.endsWith(stop.slice(0, k))) {
                    keep = k;
                    break;
                }
            }
        }
        this.held = s.slice(s.length - keep);
        return { text: s.slice(0, s.length - keep), stopped: false };
    }

    /** The held-back text, at the end of generation (no stop string came). */
    flush(): string {
        const s = this.held;
        this.held = "";
        return s;
    }
}

/** Turns token pieces (bytes) into text deltas that never split a character, with stop strings applied. */
export class TextStream {
    private readonly decoder = new TextDecoder("utf-8");
    private readonly matcher: StopMatcher;
    private done = false;

    constructor(stops: readonly string[]) {
        this.matcher = new StopMatcher(stops);
    }

    /** Adds a token's bytes; returns the text to show now and whether a stop string ended the output (and which: `stop`). */
    push(bytes: Uint8Array): { text: string; stopped: boolean; stop?: string } {
        if (this.done) return { text: "", stopped: true };
        const r = this.matcher.push(this.decoder.decode(bytes, { stream: true }));
        if (r.stopped) this.done = true;
        return r;
    }

    /** The rest of the text when generation ends without a stop string (an incomplete character becomes U+FFFD). */
    end(): string {
        if (this.done) return "";
        this.done = true;
        return this.matcher.push(this.decoder.decode()).text + this.matcher.flush();
    }
}
