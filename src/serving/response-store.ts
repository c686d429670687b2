import type { EngineEvent } from '../engine/types.js';
import type { ErrorBody } from '../protocol/errors.js';
import type { Item, ResponseRequestFields } from '../protocol/responses.js';
import type { FinishReason, Usage } from '../protocol/shared.js';
import type { ResponseOutcome } from './response-events.js';

/** A stored response and what its generation's request row says (serving never sees SQL). */
export interface StoredResponse {
  /** The uuid (also its request's id). */
  id: string;
  keyId: string | null;
  previousId: string | null;
  /** The model as the client named it. */
  model: string;
  background: boolean;
  request: ResponseRequestFields;
  inputItems: Item[];
  /** Seconds since the epoch. */
  createdAt: number;
  /** Written once it has ended; null before. */
  final: ResponseOutcome | null;
  /** Its request's status, and the outcome the worker wrote on it (null while it runs). */
  requestStatus: 'queued' | 'running' | 'completed' | 'failed' | 'cancelled';
  requestText: string | null;
  requestFinish: FinishReason | null;
  requestUsage: Usage | null;
  requestError: ErrorBody | null;
}

export interface NewStoredResponse {
  id: string;
  keyId: string | null;
  previousId: string | null;
  model: string;
  background: boolean;
  request: ResponseRequestFields;
  inputItems: Item[];
  createdAt: number;
}

/**
 * Where responses are kept (src/db/responses-repo.ts). Every lookup is by the caller's key: a
 * response is seen by every key of its owner (the key that made it, and the keys of the team it
 * was made for; ai.visible_to_key in sql/080_responses.sql), and by no other.
 */
export interface ResponseStore {
  insert(r: NewStoredResponse): Promise<void>;
  /** The response, if the key may see it. */
  find(id: string, keyId: string | null): Promise<StoredResponse | null>;
  /** The response and the ones before it (previous_response_id), oldest first; [] when the key may not see it. */
  chain(id: string, keyId: string | null): Promise<StoredResponse[]>;
  /** Stored stream events of its request from `fromSeq` on, in order, and the request's status. */
  events(id: string, fromSeq: number): Promise<{ events: { seq: number; data: EngineEvent }[]; status: StoredResponse['requestStatus'] | null }>;
  /** Records the outcome of a response that has ended (once: later calls change nothing). */
  finalize(id: string, outcome: ResponseOutcome): Promise<void>;
  /** Deletes it (and the text of its request); false when the key may not see it. */
  delete(id: string, keyId: string | null): Promise<boolean>;
}
