// Fastify's schema validation (Ajv, schemas.ts) failures as one 400 a person can read. This reads
// Ajv's structured errors (keyword, instance path, schema), never their message text.
import { badRequest, type ApiError } from "./errors.js";

/** One of Ajv's errors, with `verbose` on (the schema and the value at the error). */
interface AjvError {
    instancePath: string;
    schemaPath: string;
    keyword: string;
    params: Record<string, unknown>;
    message?: string;
    schema?: unknown;
    parentSchema?: Schema;
    data?: unknown;
}

export interface ValidationFailure {
    validation: AjvError[];
}

type Schema = {
    type?: string; description?: string; anyOf?: Schema[]; oneOf?: Schema[]; enum?: unknown[]; items?: Schema; required?: string[];
    minimum?: number; maximum?: number; exclusiveMinimum?: number; exclusiveMaximum?: number; minLength?: number; maxLength?: number;
    minItems?: number; maxItems?: number; propertyNames?: Schema;
};

/**
 * Ajv's errors as one 400 a person can read: one message per bad field, saying what the field must be
 * and what it got ("'temperature' must be a number between 0 and 2 (got \"hot\")"), the first bad
 * field in `param`. A field that may take several shapes (anyOf, oneOf) is explained by the shape its
 * value has, or by listing the shapes when its value has none of them.
 */
export function validationError(err: ValidationFailure): ApiError {
    const errors = err.validation;
    const dropped = new Set<AjvError>();
    const said = new Map<AjvError, { param: string | null; text: string }>();
    // raised within c's branches, for the same value (messages[0].content and messages[1].content share a schema path)
    const inside = (e: AjvError, c: AjvError) => e !== c && e.schemaPath.startsWith(c.schemaPath + "/") &&
        (e.instancePath === c.instancePath || e.instancePath.startsWith(c.instancePath + "/"));
    // the outer alternatives first: an inner one is only looked at when the outer picks its branch
    const combos = errors.filter((e) => e.keyword === "anyOf" || e.keyword === "oneOf").sort((a, b) => a.schemaPath.length - b.schemaPath.length);
    for (const c of combos) {
        if (dropped.has(c)) continue;
        const branches = (Array.isArray(c.schema) ? c.schema : []) as Schema[];
        const field = fieldName(c.instancePath);
        const within = errors.filter((e) => inside(e, c));
        // { oneOf: [{ required: [a] }, { required: [b] }] }: one of these fields, and only one
        const names = branches.map((b) => (b.required?.length === 1 && Object.keys(b).length === 1 ? b.required[0] : undefined));
        if (names.length > 0 && names.every((n) => n !== undefined)) {
            const list = names.map((n) => `'${field ? field + "." : ""}${n}'`).join(" or ");
            const both = Array.isArray(c.params.passingSchemas);
            said.set(c, { param: (field ? field + "." : "") + names[0], text: both ? `give only one of ${list}` : `one of ${list} is required` });
            for (const e of within) dropped.add(e);
            continue;
        }
        const fits = branches.map((b, i) => ({ b, i })).filter(({ b }) => b.type !== "null" && fitsType(b, c.data));
        if (fits.length === 1) {
            // the value has the shape of one branch: that branch's own errors say what is wrong with it
            const keep = `${c.schemaPath}/${fits[0].i}/`;
            for (const e of within) if (!e.schemaPath.startsWith(keep)) dropped.add(e);
            dropped.add(c);
            continue;
        }
        const shapes = c.parentSchema?.description ?? oneOfList(branches.filter((b) => b.type !== "null").map(describe));
        said.set(c, { param: field || null, text: `${subject(field)} must be ${shapes} (got ${shown(c.data)})` });
        for (const e of within) dropped.add(e);
    }
    const byField = new Map<string, { param: string | null; text: string }>();
    for (const e of errors) {
        if (dropped.has(e)) continue;
        const m = said.get(e) ?? explain(e, errors);
        if (!m) continue;
        const key = m.param ?? "";
        if (!byField.has(key)) byField.set(key, m);
    }
    const all = [...byField.values()];
    return badRequest(all.map((m) => m.text).join("; ") || "the request body is invalid", all[0]?.param ?? null);
}

/** One (non-alternative) Ajv error as a sentence about its field; undefined for one another error explains. */
function explain(e: AjvError, all: AjvError[]): { param: string | null; text: string } | undefined {
    let field = fieldName(e.instancePath);
    const p = e.params, s = e.parentSchema ?? {};
    let what: string;
    switch (e.keyword) {
        case "required":
            field = (field ? field + "." : "") + String(p.missingProperty);
            return { param: field, text: `'${field}' is required` };
        case "type":
            if (p.type === "null") return undefined; // a nullable field's other branch says what is wrong
            if (!field && (e.data === undefined || e.data === null)) return { param: null, text: "the request body is missing: send a JSON object" };
            what = `must be ${describe(s)} (got ${shown(e.data)})`;
            break;
        case "minimum": case "maximum": case "exclusiveMinimum": case "exclusiveMaximum":
            what = `must be ${describe(s)} (got ${shown(e.data)})`;
            break;
        case "enum":
            what = `must be one of ${(p.allowedValues as unknown[]).map((v) => (typeof v === "string" ? v : JSON.stringify(v))).join(", ")} (got ${shown(e.data)})`;
            break;
        case "minLength":
            what = p.limit === 1 ? "must not be empty" : `must be at least ${p.limit} characters long (got ${String(e.data).length})`;
            break;
        case "maxLength":
            what = `must be at most ${p.limit} characters long (got ${String(e.data).length})`;
            break;
        case "minItems":
            what = p.limit === 1 ? "must not be empty" : `must have at least ${p.limit} items (got ${(e.data as unknown[]).length})`;
            break;
        case "maxItems":
            what = `must have at most ${p.limit} items (got ${(e.data as unknown[]).length})`;
            break;
        case "maxProperties":
            what = `must have at most ${p.limit} entries (got ${Object.keys(e.data as object).length})`;
            break;
        case "propertyNames":
            what = `has a key that is not ${s.propertyNames?.description ?? "allowed"}: ${shown(p.propertyName)}`;
            break;
        default:
            // the name check's own error ("must match pattern") is said better by its propertyNames error
            if (all.some((o) => o.keyword === "propertyNames" && e.schemaPath.startsWith(o.schemaPath + "/"))) return undefined;
            what = `${e.message ?? "is invalid"}${e.data !== undefined && typeof e.data !== "object" ? ` (got ${shown(e.data)})` : ""}`;
    }
    return { param: field || null, text: `${subject(field)} ${what}` };
}

/** Ajv's instance path as the request writes it: /messages/0/role is messages[0].role. */
function fieldName(instancePath: string): string {
    return instancePath.replace(/^\//, "").replace(/\/(\d+)(?=\/|$)/g, "[$1]").replace(/\//g, ".").replace(/~1/g, "/").replace(/~0/g, "~");
}

function subject(field: string): string {
    return field ? `'${field}'` : "the request body";
}

/** Whether a value has the JSON type a schema asks for (ignoring its other constraints). */
function fitsType(s: Schema, v: unknown): boolean {
    const alts = s.anyOf ?? s.oneOf;
    if (alts) return alts.some((b) => fitsType(b, v));
    if (s.enum) return s.enum.some((x) => typeof x === typeof v);
    switch (s.type) {
        case undefined: return true;
        case "null": return v === null;
        case "integer": return typeof v === "number" && Number.isInteger(v);
        case "number": return typeof v === "number";
        case "array": return Array.isArray(v);
        case "object": return typeof v === "object" && v !== null && !Array.isArray(v);
        default: return typeof v === s.type;
    }
}

/** What a schema asks for, in words: "an integer between 1 and 128", "a non-empty string", "an array of integers >= 0". */
function describe(s: Schema): string {
    if (s.description) return s.description;
    const alts = s.anyOf ?? s.oneOf;
    if (alts) return oneOfList(alts.filter((b) => b.type !== "null").map(describe));
    if (s.enum) return `one of ${s.enum.map((v) => (typeof v === "string" ? v : JSON.stringify(v))).join(", ")}`;
    switch (s.type) {
        case "integer":
        case "number": {
            const base = s.type === "integer" ? "an integer" : "a number";
            if (s.minimum !== undefined && s.maximum !== undefined) return `${base} between ${s.minimum} and ${s.maximum}`;
            const bounds = [
                s.minimum !== undefined && `>= ${s.minimum}`, s.exclusiveMinimum !== undefined && `> ${s.exclusiveMinimum}`,
                s.maximum !== undefined && `<= ${s.maximum}`, s.exclusiveMaximum !== undefined && `< ${s.exclusiveMaximum}`,
            ].filter(Boolean);
            return bounds.length > 0 ? `${base} ${bounds.join(" and ")}` : base;
        }
        case "string": {
            const base = s.minLength === 1 ? "a non-empty string" : "a string";
            return s.maxLength !== undefined ? `${base} of at most ${s.maxLength} characters` : base;
        }
        case "boolean": return "true or false";
        case "object": return "an object";
        case "null": return "null";
        case "array": {
            const of = s.items ? ` of ${plural(describe(s.items))}` : "";
            return s.minItems === 1 ? `a non-empty array${of}` : `an array${of}`;
        }
        default: return "valid";
    }
}

/** "an integer >= 0" as "integers >= 0", "a string" as "strings". */
function plural(d: string): string {
    return d.replace(/^(?:an?|one of) (non-empty )?(\w+)/, (_m, ne: string | undefined, w: string) => `${ne ?? ""}${w}s`);
}

function oneOfList(items: string[]): string {
    const u = [...new Set(items)];
    return u.length <= 1 ? (u[0] ?? "valid") : `${u.slice(0, -1).join(", ")} or ${u.at(-1)}`;
}

/** A value as an error message shows it: short scalars as JSON, the rest by kind. */
function shown(v: unknown): string {
    if (v === undefined) return "nothing";
    if (Array.isArray(v)) return v.length === 0 ? "an empty array" : `an array of ${v.length}`;
    if (typeof v === "object" && v !== null) return "an object";
    if (typeof v === "string" && v.length > 40) return `a string of ${v.length} characters`;
    return JSON.stringify(v);
}
