import { editMessages, parseEditRequest, type Edit } from '../protocol/edits.js';
import { ApiError } from '../protocol/errors.js';
import type { ChatServing } from './chat.js';
import type { RequestContext } from './context.js';

/**
 * POST /v1/edits without HTTP: a chat completion of the documented prompt (protocol/edits.ts),
 * so it is validated, scoped, limited, queued and logged as any chat request is (the log holds
 * the chat messages it became), and answered in the legacy `edit` shape.
 */
export class EditsServing {
  constructor(private readonly chat: ChatServing) {}

  async create(body: unknown, ctx: RequestContext, onQueued?: (requestId: string) => void): Promise<{ requestId: string; body: Edit }> {
    const req = parseEditRequest(body);
    const chatBody = {
      model: req.model,
      messages: editMessages(req),
      ...(req.n != null ? { n: req.n } : {}),
      ...(req.temperature != null ? { temperature: req.temperature } : {}),
      ...(req.top_p != null ? { top_p: req.top_p } : {}),
    };
    let result;
    try {
      result = await this.chat.create(chatBody, ctx, onQueued);
    } catch (err) {
      // The chat endpoint names its own fields; the client sent instruction and input.
      if (err instanceof ApiError && err.param?.startsWith('messages')) throw new ApiError(err.status, err.message, err.type, err.code, 'input');
      throw err;
    }
    if (result.kind !== 'json') throw new Error('a chat request without stream answered with a stream');
    const c = result.body;
    return {
      requestId: result.requestId,
      body: {
        object: 'edit',
        created: c.created,
        choices: c.choices.map((ch) => ({ text: ch.message.content ?? '', index: ch.index, finish_reason: ch.finish_reason })),
        usage: c.usage,
      },
    };
  }
}
