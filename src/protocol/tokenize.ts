import { compileValidator, type Schema } from './validate.js';
import { errors } from './errors.js';
import { parseChatCompletionRequest, toChatPrompt, type ChatMessage, type ToolDefinition } from './chat.js';
import { nullable } from './shared.js';
import type { TokenizeRequest } from '../engine/types.js';

/**
 * vLLM's /tokenize and /detokenize (vllm/entrypoints/openai/protocol.py: TokenizeCompletionRequest,
 * TokenizeChatRequest, DetokenizeRequest), fields in its order. Messages are checked by the chat
 * completion rules, so a conversation tokenizes exactly as it would be prompted.
 */
export interface TokenizeBody {
  model: string;
  prompt?: string;
  messages?: ChatMessage[];
  add_generation_prompt?: boolean | null;
  add_special_tokens?: boolean | null;
  tools?: ToolDefinition[] | null;
}

export interface TokenizeResponse {
  count: number;
  max_model_len: number;
  tokens: number[];
  token_strs: null;
}

export interface DetokenizeBody {
  model: string;
  tokens: number[];
}

/** vLLM's chat-only options this server does not take yet: a 400 naming them. */
const UNSUPPORTED = ['continue_final_message', 'chat_template', 'chat_template_kwargs', 'mm_processor_kwargs', 'return_token_strs'];

const tokenizeSchema: Schema = {
  type: 'object',
  required: ['model'],
  additionalProperties: false,
  'x-unsupported': UNSUPPORTED,
  properties: {
    model: { type: 'string', minLength: 1 },
    prompt: { type: 'string' },
    // Shape-checked by the chat rules below.
    messages: { type: 'array', minItems: 1 },
    add_generation_prompt: nullable({ type: 'boolean' }),
    add_special_tokens: nullable({ type: 'boolean' }),
    tools: nullable({ type: 'array' }),
  },
};

/** Token ids are vocabulary indices: non-negative 32-bit integers, at most a long context's worth. */
const detokenizeSchema: Schema = {
  type: 'object',
  required: ['model', 'tokens'],
  additionalProperties: false,
  properties: {
    model: { type: 'string', minLength: 1 },
    tokens: { type: 'array', maxItems: 1_048_576, items: { type: 'integer', minimum: 0, maximum: 2_147_483_647 } },
  },
};

const checkTokenize = compileValidator<TokenizeBody>(tokenizeSchema);
export const parseDetokenizeRequest = compileValidator<DetokenizeBody>(detokenizeSchema);

/** A tokenize body as the engine's request (model as sent: serving resolves it). */
export function parseTokenizeRequest(body: unknown): TokenizeRequest {
  const req = checkTokenize(body);
  const chat = req.messages !== undefined;
  if (chat === (req.prompt !== undefined)) throw errors.invalid("Give exactly one of 'prompt' or 'messages'.", chat ? 'prompt' : 'messages');
  if (!chat) {
    for (const p of ['add_generation_prompt', 'tools'] as const) {
      if (req[p] !== undefined && req[p] !== null) throw errors.invalid(`'${p}' is only allowed with 'messages'.`, p);
    }
    return { model: req.model, input: { text: req.prompt!, addSpecialTokens: req.add_special_tokens ?? true } };
  }
  const parsed = parseChatCompletionRequest({ model: req.model, messages: req.messages, ...(req.tools ? { tools: req.tools } : {}) });
  const prompt = toChatPrompt(parsed);
  return {
    model: req.model,
    input: {
      messages: prompt.messages,
      ...(prompt.tools ? { tools: prompt.tools } : {}),
      // vLLM's defaults: the template writes the special tokens, so none are added.
      addGenerationPrompt: req.add_generation_prompt ?? true,
      addSpecialTokens: req.add_special_tokens ?? false,
    },
  };
}
