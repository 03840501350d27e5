// batchwise: serve LLMs from Node.
export {
    BatchwiseError,
    ErrorCode,
    LlamaContext,
    LlamaModel,
    LogLevel,
    cacheDir,
    cachedRandomModel,
    createRandomModel,
    getDevices,
    heapStats,
    jsonSchemaToGrammar,
    resolveVocab,
    setLogger,
    systemInfo,
    trimHeap,
    vocabDir,
} from "./binding/index.js";
export type {
    ContextInfo,
    ContextPerf,
    ContextOptions,
    DecodeBatch,
    DecodeResult,
    DeviceInfo,
    HeapStats,
    KvCacheType,
    ModelLoadOptions,
    ModelMetadata,
    RandomModelOptions,
    SamplerParams,
    SplitMode,
    SystemInfo,
} from "./binding/index.js";
export { Engine, Generation } from "./engine/engine.js";
export { choiceToGrammar, gbnfLiteral, regexToGrammar } from "./engine/constraints.js";
export type {
    ChatRequest, Choice, EngineOptions, EngineSettings, EngineStats, GenerateEvent, GenerateResult, Timings, TokenLogprob, Usage,
} from "./engine/engine.js";
export type { AssistantMessage, ChatFormatOptions, ChatMessage, ChatOptions, ChatTool, MessageDelta, ToolChoice } from "./engine/chat.js";
export type { GenerateRequest, RequestOptions, ResponseFormat, SamplingOptions } from "./engine/request.js";
export type { FinishReason, PreemptionMode } from "./scheduler/scheduler.js";
