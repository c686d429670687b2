import type pg from 'pg';
import { parseChatCompletionRequest, toChatPrompt, toSamplingParams, type ChatCompletion, type ChatCompletionRequest, type ChatPrompt, type SamplingParams } from '../protocol/chat.js';
import { buildChatCompletion, toolCallParsing, type GeneratedChoice } from '../protocol/chat-completion.js';
import { errors } from '../protocol/errors.js';
import { checkGeneration, maxBatchTokens, promptTexts, readInputBound } from '../protocol/limits.js';
import type { Usage } from '../protocol/shared.js';
import { HERMES_TOOL_FORMAT, readToolFormat, type ToolCallFormat } from '../protocol/tools.js';

/**
 * Requests made in SQL (ai.chat_complete, ai.submit_chat) and Batch API lines are stored as the
 * OpenAI body a client sent (params.format 'openai'), not translated: the worker validates and
 * translates them here with the gateway's own code (src/protocol/), and writes the final
 * `chat.completion` into output.completion. One implementation of the rules, whichever way a
 * request came in: the same malformed body fails with the same message, param and code.
 */

export function isOpenAiRequest(params: unknown): boolean {
  return (params as { format?: unknown } | null)?.format === 'openai';
}

interface ModelInfo {
  defaults: Record<string, unknown>;
  toolFormat: ToolCallFormat;
  inputBound: ReturnType<typeof readInputBound>;
}

/** A model's defaults change rarely; a second's staleness saves a read per request. */
const MODEL_TTL_MS = 1000;
const models = new Map<string, { at: number; info: ModelInfo }>();

async function modelInfo(pool: pg.Pool, name: string): Promise<ModelInfo> {
  const hit = models.get(name);
  if (hit && Date.now() - hit.at < MODEL_TTL_MS) return hit.info;
  const r = await pool.query<{ defaults: Record<string, unknown> | null; tool_call_format: unknown; input_bound: unknown }>(
    'select defaults, tool_call_format, input_bound from ai.models where name = $1',
    [name],
  );
  const row = r.rows[0];
  if (!row) throw errors.modelNotFound(name);
  const info = { defaults: row.defaults ?? {}, toolFormat: readToolFormat(row.tool_call_format) ?? HERMES_TOOL_FORMAT, inputBound: readInputBound(row.input_bound) };
  models.set(name, { at: Date.now(), info });
  return info;
}

export interface OpenAiChat {
  req: ChatCompletionRequest;
  prompt: ChatPrompt;
  params: SamplingParams;
  /** The format tool calls are read out of the text with, or null. */
  tools: ToolCallFormat | null;
}

/**
 * A stored chat body, validated and translated as POST /v1/chat/completions does it
 * (serving/chat.ts): throws the same ApiError for the same body.
 */
export async function readOpenAiChat(pool: pg.Pool, model: string, body: unknown): Promise<OpenAiChat> {
  const req = parseChatCompletionRequest(body);
  // Nobody reads a stream of these: the answer is the stored chat.completion.
  if (req.stream) throw errors.invalid("'stream' is not supported for requests made in SQL or in a batch: the answer is stored whole.", 'stream');
  // Nobody would redact it afterwards, as serve does once its client has the answer: refused, not ignored.
  if (req.store === false) throw errors.invalid("'store: false' is not supported for requests made in SQL or in a batch: their answer is read from the stored row.", 'store');
  const info = await modelInfo(pool, model);
  const prompt = toChatPrompt(req);
  const params = toSamplingParams(req, info.defaults, info.toolFormat);
  checkGeneration({ texts: promptTexts(prompt) }, params, info.inputBound, maxBatchTokens(), 'messages');
  return { req, prompt, params, tools: toolCallParsing(req, info.toolFormat) };
}

export function openAiCompletion(chat: OpenAiChat, requestId: string, choices: GeneratedChoice[], usage: Usage): ChatCompletion {
  return buildChatCompletion(chat.req, requestId, Math.floor(Date.now() / 1000), choices, usage, chat.tools);
}
