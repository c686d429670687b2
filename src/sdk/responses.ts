import type { ResponseObject, ResponseStreamEvent } from '../protocol/responses.js';
import { toSdkError } from './errors.js';

/** A response object with openai-node's `output_text` convenience: the text of its output messages, joined. */
export type SdkResponse = ResponseObject & { output_text: string };

export function withOutputText(r: ResponseObject): SdkResponse {
  const text = r.output.flatMap((o) => (o.type === 'message' ? o.content.map((c) => c.text) : [])).join('');
  return { ...r, output_text: text };
}

/**
 * A streamed response: async-iterable Responses events (`response.created`, ...,
 * `response.completed`), each with its `sequence_number`. A consumer that stops early cancels
 * the generation, unless the response runs in the background (then it goes on, and can be
 * streamed again with `responses.retrieve(id, { stream: true, starting_after })`).
 */
export class ResponseStream implements AsyncIterable<ResponseStreamEvent> {
  constructor(
    readonly responseId: string,
    private readonly events: AsyncIterable<ResponseStreamEvent>,
    private readonly cancel: (() => Promise<void>) | null,
  ) {}

  async *[Symbol.asyncIterator](): AsyncIterator<ResponseStreamEvent> {
    let finished = false;
    try {
      for await (const e of this.events) yield e;
      finished = true;
    } catch (err) {
      finished = true;
      throw toSdkError(err, this.responseId);
    } finally {
      if (!finished && this.cancel) await this.cancel().catch(() => {});
    }
  }
}
