import { compileValidator, type Schema } from './validate.js';
import type { Usage } from './shared.js';

/**
 * POST /v1/edits (OpenAI's retired Edits API, still called by old applications and served by
 * text-generation-webui): an instruction applied to a text, answered by a chat generation with
 * the prompt below (docs/compatibility.md documents it).
 */
export interface EditRequest {
  model: string;
  instruction: string;
  input?: string | null;
  n?: number | null;
  temperature?: number | null;
  top_p?: number | null;
}

export const editRequestSchema: Schema = {
  type: 'object',
  required: ['model', 'instruction'],
  additionalProperties: false,
  properties: {
    model: { type: 'string', minLength: 1 },
    instruction: { type: 'string', minLength: 1 },
    input: { anyOf: [{ type: 'string' }, { type: 'null' }], 'x-expect': 'a string or null' },
    // Ranges are the chat endpoint's (it checks them, under the same names).
    n: { anyOf: [{ type: 'integer' }, { type: 'null' }], 'x-expect': 'an integer or null' },
    temperature: { anyOf: [{ type: 'number' }, { type: 'null' }], 'x-expect': 'a number or null' },
    top_p: { anyOf: [{ type: 'number' }, { type: 'null' }], 'x-expect': 'a number or null' },
  },
};

export const parseEditRequest = compileValidator<EditRequest>(editRequestSchema);

/** What the model is told: the instruction and the text, in one user turn after a system turn. */
export const EDIT_SYSTEM_PROMPT = "Apply the user's instruction to the text that follows it. Reply with the edited text only, without comments.";

export function editMessages(req: EditRequest): { role: 'system' | 'user'; content: string }[] {
  return [
    { role: 'system', content: EDIT_SYSTEM_PROMPT },
    { role: 'user', content: `Instruction: ${req.instruction}\n\nText:\n${req.input ?? ''}` },
  ];
}

export interface Edit {
  object: 'edit';
  created: number;
  choices: { text: string; index: number; finish_reason: string }[];
  usage: Usage;
}
