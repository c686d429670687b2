import { toChatLogprobs, type ChatCompletion, type ChatCompletionRequest } from './chat.js';
import { parseToolCalls, type ToolCall, type ToolCallFormat } from './tools.js';
import { splitReasoning, type ReasoningFormat } from './reasoning.js';
import { wireId, type FinishReason, type TokenLogprob, type Usage } from './shared.js';

/**
 * The `chat.completion` object a finished generation answers with. One builder for every way in:
 * the gateway's JSON answer (serving/chat.ts) and the answer a worker writes for a request made
 * in SQL or a batch (worker/openai-request.ts), so they cannot disagree.
 */

export const SYSTEM_FINGERPRINT = 'switchyard';

export interface GeneratedChoice {
  index: number;
  text: string;
  finishReason: FinishReason;
  logprobs: TokenLogprob[];
  stopSequence?: string;
}

/** The format tool calls are read out of the text with: none when the request has no tools or forbids calling them. */
export function toolCallParsing(req: ChatCompletionRequest, format: ToolCallFormat): ToolCallFormat | null {
  return req.tools?.length && req.tool_choice !== 'none' ? format : null;
}

export function buildChatCompletion(
  req: ChatCompletionRequest,
  requestId: string,
  created: number,
  choices: GeneratedChoice[],
  usage: Usage,
  tools: ToolCallFormat | null,
  /** The model's reasoning format: its section becomes reasoning_content, calls are read from the rest. */
  reasoning: ReasoningFormat | null = null,
): ChatCompletion {
  return {
    id: wireId('chatcmpl', requestId),
    object: 'chat.completion',
    created,
    model: req.model,
    choices: choices.map(({ index, text: all, finishReason, logprobs, stopSequence }) => {
      const split = reasoning ? splitReasoning(all, reasoning) : null;
      const text = split ? split.content : all;
      const parsed = tools ? parseToolCalls(text, tools) : { content: text, calls: [] as ToolCall[] };
      const { calls } = parsed;
      // With a reasoning format, a reply that is all reasoning has no content (null), as OpenAI's reasoning models answer.
      const content = split && !parsed.content ? null : parsed.content;
      return {
        index,
        message: {
          role: 'assistant' as const,
          content,
          refusal: null,
          ...(calls.length ? { tool_calls: calls } : {}),
          ...(split ? { reasoning_content: split.reasoning } : {}),
        },
        logprobs: req.logprobs ? toChatLogprobs(logprobs) : null,
        finish_reason: calls.length && finishReason === 'stop' ? ('tool_calls' as const) : finishReason,
        ...(stopSequence !== undefined ? { stop_reason: stopSequence } : {}),
      };
    }),
    usage,
    system_fingerprint: SYSTEM_FINGERPRINT,
  };
}
