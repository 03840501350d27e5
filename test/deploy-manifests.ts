// Helpers of test/deploy.test.ts for Kubernetes manifests: reading YAML files and kustomizations, and
// validating an object against the Kubernetes OpenAPI schema of its apiVersion and kind
// (kubernetes-models, @kubernetes-models/keda, @kubernetes-models/prometheus-operator). No side
// effects at import.
import { existsSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { parseAllDocuments } from "yaml";

export type Obj = Record<string, any>;

/** A manifest object and where it came from. */
export interface Manifest {
    file: string;
    obj: Obj;
}

/** Every YAML document of a file (empty documents skipped); a YAML error throws, naming the file. */
export function readYamlDocs(file: string): Obj[] {
    const docs = parseAllDocuments(readFileSync(file, "utf8"), { prettyErrors: true });
    const out: Obj[] = [];
    for (const d of docs) {
        if (d.errors.length > 0) throw new Error(`${file}: ${d.errors.map((e) => e.message).join("; ")}`);
        const v = d.toJS();
        if (v !== null && v !== undefined) out.push(v as Obj);
    }
    return out;
}

/** The files a kustomization lists under `resources`, folders (other kustomizations) followed. */
export function kustomizationFiles(dir: string, seen = new Set<string>()): string[] {
    const k = readYamlDocs(join(dir, "kustomization.yaml"))[0] ?? {};
    const out: string[] = [];
    for (const r of (k.resources ?? []) as string[]) {
        const p = join(dir, r);
        if (!existsSync(p)) throw new Error(`${join(dir, "kustomization.yaml")}: resource '${r}' does not exist`);
        if (statSync(p).isDirectory()) {
            if (!existsSync(join(p, "kustomization.yaml"))) throw new Error(`${p}: a folder resource without kustomization.yaml`);
            if (!seen.has(p)) {
                seen.add(p);
                out.push(...kustomizationFiles(p, seen));
            }
        } else {
            out.push(p);
        }
    }
    return out;
}

/** The schema module of an apiVersion: the packages this project validates with. */
function schemaModule(apiVersion: string): string | undefined {
    if (apiVersion === "v1") return "kubernetes-models/v1";
    const [group, version] = apiVersion.split("/");
    if (!version) return undefined;
    if (group === "keda.sh") return `@kubernetes-models/keda/keda.sh/${version}`;
    if (group === "monitoring.coreos.com") return `@kubernetes-models/prometheus-operator/monitoring.coreos.com/${version}`;
    // the built-in API groups kubernetes-models has a folder for
    const builtin = ["apps", "batch", "policy", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io", "scheduling.k8s.io", "storage.k8s.io", "discovery.k8s.io", "coordination.k8s.io", "node.k8s.io"];
    return builtin.includes(group) ? `kubernetes-models/${group}/${version}` : undefined;
}

interface ModelClass {
    new (data: Obj): { validate(): void };
}

/** The kubernetes-models class of an object's apiVersion and kind; throws for a kind without one. */
async function modelClass(obj: Obj): Promise<ModelClass> {
    const { apiVersion, kind } = obj;
    if (typeof apiVersion !== "string" || typeof kind !== "string") throw new Error("an object without apiVersion and kind");
    const spec = schemaModule(apiVersion);
    if (!spec) throw new Error(`no schema for apiVersion ${apiVersion} (kind ${kind}): unknown kinds are refused`);
    let mod: Record<string, unknown>;
    try {
        mod = await import(spec);
    } catch {
        throw new Error(`no schema for apiVersion ${apiVersion} (kind ${kind}): unknown kinds are refused`);
    }
    const cls = mod[kind];
    if (typeof cls !== "function") throw new Error(`no schema for kind ${kind} in ${apiVersion}: unknown kinds are refused`);
    return cls as ModelClass;
}

interface SchemaError {
    instancePath: string;
    message?: string;
}

/** The schema's errors for `obj` (empty: valid). */
function schemaErrors(cls: ModelClass, obj: Obj): SchemaError[] {
    try {
        new cls(obj).validate();
        return [];
    } catch (e) {
        const errors = (e as { errors?: SchemaError[] }).errors;
        if (!Array.isArray(errors)) throw e;
        return errors;
    }
}

const pointer = (path: (string | number)[]) => path.map((p) => "/" + String(p).replace(/~/g, "~0").replace(/\//g, "~1")).join("");

/**
 * Validates an object against its schema, and finds the fields the schema does not know. The
 * kubernetes-models schemas, like the OpenAPI ones they come from, do not refuse unknown fields (the API
 * server drops them, with a warning at most), so a misspelt `readinesProbe` would pass and the probe be
 * lost. A field is known when the schema checks it: each field is set in turn to values of the wrong
 * type (a fraction, then a boolean) and a field whose wrong value draws no error at its path is one the
 * schema ignores. Returns the problems, each naming a path; empty when the object is valid.
 */
export async function validateManifest(obj: Obj): Promise<string[]> {
    const cls = await modelClass(obj);
    const errors = schemaErrors(cls, obj);
    if (errors.length > 0) return errors.map((e) => `${e.instancePath || "/"} ${e.message ?? "is invalid"}`);
    const problems: string[] = [];
    const walk = (node: unknown, path: (string | number)[]) => {
        if (Array.isArray(node)) {
            node.forEach((v, i) => walk(v, [...path, i]));
            return;
        }
        if (node === null || typeof node !== "object") return;
        for (const key of Object.keys(node)) {
            const at = pointer([...path, key]);
            const known = [1.5, true].some((probe) => {
                const copy = structuredClone(obj);
                let parent: any = copy;
                for (const p of path) parent = parent[p];
                parent[key] = probe;
                return schemaErrors(cls, copy).some((e) => e.instancePath === at || e.instancePath.startsWith(at + "/"));
            });
            if (!known) problems.push(`${at} is not a field of ${obj.apiVersion} ${obj.kind}`);
            else walk((node as Obj)[key], [...path, key]);
        }
    };
    walk(obj, []);
    return problems;
}

/** A path relative to the repository root, for messages. */
export function rel(root: string, file: string): string {
    return relative(root, file) || file;
}

/** The folder of every kustomization.yaml under `dir`. */
export function kustomizationDirs(files: string[]): string[] {
    return files.filter((f) => f.endsWith("/kustomization.yaml")).map((f) => dirname(f));
}
