// batchwise: serve LLMs from Node.
export {
    BatchwiseError,
    ErrorCode,
    LlamaContext,
    LlamaModel,
    LogLevel,
    createRandomModel,
    getDevices,
    resolveVocab,
    setLogger,
    systemInfo,
    vocabDir,
} from "./binding/index.js";
export type {
    ChatMessage,
    ContextInfo,
    ContextOptions,
    DecodeBatch,
    DecodeResult,
    DeviceInfo,
    KvCacheType,
    ModelLoadOptions,
    ModelMetadata,
    RandomModelOptions,
    SamplerParams,
    SplitMode,
    SystemInfo,
} from "./binding/index.js";
