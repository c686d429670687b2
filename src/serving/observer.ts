import type { Usage } from '../protocol/shared.js';

/** What serving reports about requests as they progress (the HTTP layer turns it into metrics). */
export interface Observer {
  started(model: string, queueWaitMs: number): void;
  firstToken(model: string, sinceRequestMs: number): void;
  usage(model: string, usage: Pick<Usage, 'prompt_tokens'> & Partial<Usage>): void;
}

export const noObserver: Observer = { started() {}, firstToken() {}, usage() {} };
