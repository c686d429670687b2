import { reasoningFormatProblem, type ReasoningFormat } from '../protocol/reasoning.js';
import type { ChatPrompt, ConstraintSpec, Prompt, SamplingParams } from '../protocol/chat.js';
import { toolFormatProblem } from '../protocol/tools.js';

/**
 * A queued request can outlive the code that queued it, so what the worker reads back from
 * ai.requests is checked at run time, not trusted by type.
 */
export class StoredRequestError extends Error {}

function num(v: unknown, name: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new StoredRequestError(`stored params.${name} is not a number`);
  return v;
}

export function readJobPayload(payload: unknown): { requestId: string } {
  const id = (payload as { request_id?: unknown } | null)?.request_id;
  if (typeof id !== 'string' || !/^[0-9a-f-]{36}$/.test(id)) throw new StoredRequestError(`job payload has no valid request_id: ${JSON.stringify(payload)}`);
  return { requestId: id };
}

function readPrompt(input: unknown, template: string | null): Prompt {
  const raw = (input as { prompt?: unknown } | null)?.prompt;
  if (typeof raw === 'string') return { text: raw };
  if (Array.isArray(raw) && raw.every((t) => Number.isInteger(t) && t >= 0)) return { ids: raw as number[] };
  const messages = (input as { messages?: unknown } | null)?.messages;
  if (!Array.isArray(messages) || messages.some((m) => typeof m?.role !== 'string' || typeof m?.content !== 'string' || (m.tool_calls !== undefined && !Array.isArray(m.tool_calls)))) {
    throw new StoredRequestError('stored input is neither messages ({role, content} strings) nor a prompt (text or token ids)');
  }
  const tools = (input as { tools?: unknown }).tools;
  if (tools !== undefined && tools !== null && !Array.isArray(tools)) throw new StoredRequestError('stored input.tools is not a list');
  return { messages: messages as ChatPrompt['messages'], chatTemplate: template, ...(Array.isArray(tools) && tools.length ? { tools } : {}) };
}

/** The structured-output constraint, checked in shape (its schema is compiled, and checked, by the worker). */
function readConstraint(v: unknown): ConstraintSpec | null {
  if (v === null || v === undefined) return null;
  const c = v as Record<string, unknown>;
  if (typeof c !== 'object' || Array.isArray(c)) throw new StoredRequestError('stored params.constraint is not an object');
  if (c.maxTokens !== null && c.maxTokens !== undefined) num(c.maxTokens, 'constraint.maxTokens');
  if (c.reasoning !== undefined && c.reasoning !== null) {
    const problem = reasoningFormatProblem(c.reasoning);
    if (problem) throw new StoredRequestError(`stored params.constraint.reasoning: ${problem}`);
  }
  const common = {
    maxTokens: (c.maxTokens as number | null | undefined) ?? null,
    lazy: c.lazy === true,
    ...(c.reasoning ? { reasoning: c.reasoning as ReasoningFormat } : {}),
  };
  switch (c.kind) {
    case 'json_object':
      return { kind: 'json_object', ...common };
    case 'json_schema':
      if (typeof c.schema !== 'boolean' && (typeof c.schema !== 'object' || c.schema === null)) throw new StoredRequestError('stored params.constraint.schema is not a schema');
      return { kind: 'json_schema', ...common, schema: c.schema as Record<string, unknown> | boolean };
    case 'tool_calls': {
      const problem = toolFormatProblem(c.format);
      if (problem) throw new StoredRequestError(`stored params.constraint.format: ${problem}`);
      const tools = c.tools;
      if (!Array.isArray(tools) || !tools.length || tools.some((t) => typeof t?.name !== 'string' || (t.parameters !== null && typeof t.parameters !== 'object'))) {
        throw new StoredRequestError('stored params.constraint.tools is not a list of {name, parameters}');
      }
      return { kind: 'tool_calls', ...common, format: c.format as Extract<ConstraintSpec, { kind: 'tool_calls' }>['format'], tools, parallel: c.parallel === true };
    }
    default:
      throw new StoredRequestError(`stored params.constraint.kind is not one of json_object, json_schema, tool_calls`);
  }
}

export function readChatRequest(input: unknown, params: unknown): { prompt: Prompt; params: SamplingParams } {
  const p = (params ?? {}) as Record<string, unknown>;
  const stop = p.stop ?? [];
  if (!Array.isArray(stop) || stop.some((s) => typeof s !== 'string')) throw new StoredRequestError('stored params.stop is not a list of strings');
  const template = p.chat_template ?? null;
  if (template !== null && typeof template !== 'string') throw new StoredRequestError('stored params.chat_template is not a string');
  return {
    prompt: readPrompt(input, template as string | null),
    params: {
      maxTokens: p.maxTokens === null || p.maxTokens === undefined ? null : num(p.maxTokens, 'maxTokens'),
      temperature: num(p.temperature, 'temperature'),
      topP: num(p.topP, 'topP'),
      ...(p.topK === undefined || p.topK === null ? {} : { topK: num(p.topK, 'topK') }),
      n: num(p.n, 'n'),
      stop: stop as string[],
      seed: p.seed === null || p.seed === undefined ? null : num(p.seed, 'seed'),
      frequencyPenalty: num(p.frequencyPenalty, 'frequencyPenalty'),
      presencePenalty: num(p.presencePenalty, 'presencePenalty'),
      logprobs: p.logprobs === null || p.logprobs === undefined ? null : num(p.logprobs, 'logprobs'),
      echo: p.echo === true,
      constraint: readConstraint(p.constraint),
    },
  };
}
