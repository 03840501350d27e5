// Build settings shared by the install and build scripts: BATCHWISE_<NAME> in the environment, else
// npm config (`npm install --batchwise-<name>=...` sets npm_config_batchwise_<name>).
export function setting(name) {
    const env = process.env[`BATCHWISE_${name}`];
    if (env !== undefined && env !== "") return env;
    const npm = process.env[`npm_config_batchwise_${name.toLowerCase()}`];
    return npm !== undefined && npm !== "" ? npm : undefined;
}

export function flag(name) {
    const v = setting(name);
    return v !== undefined && !["0", "false", "off", "no"].includes(String(v).toLowerCase());
}

/** The build configuration's name and folder (build-native/<flavour>): one per CPU/CUDA setting, kept between builds. */
export function buildFlavour() {
    const cuda = flag("CUDA");
    const cudaArchs = setting("CUDA_ARCHITECTURES") ?? "90a";
    return cuda ? `cuda-${cudaArchs.replace(/[^0-9a-z]+/gi, "_")}` : flag("NATIVE") ? "cpu-native" : "cpu";
}
