/** The Postgres-direct SDK: `import { OpenSourceAI } from 'switchyard'`. */
export { OpenSourceAI, ChatStream, type ClientOptions, type ChatOptions, type ModelObject } from './client.js';
export {
  SwitchyardError,
  BadRequestError,
  AuthenticationError,
  PermissionDeniedError,
  NotFoundError,
  ConflictError,
  UnprocessableEntityError,
  RateLimitError,
  APITimeoutError,
  InternalServerError,
} from './errors.js';
export type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatMessage } from '../protocol/chat.js';
export type { EmbeddingList, EmbeddingRequest } from '../protocol/embeddings.js';
export type { Model, ModelList } from '../protocol/models.js';
export { ResponseStream, type SdkResponse } from './responses.js';
export type { ResponseCreateRequest, ResponseObject, ResponseStreamEvent, InputItemList } from '../protocol/responses.js';
export { Page, type Uploadable, type FileCreateParams, type BatchCreateParams } from './batches.js';
export type { FileObject, BatchObject } from '../serving/batches.js';
