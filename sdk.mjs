// The package entry (`import { OpenSourceAI } from 'switchyard'`): the SDK is TypeScript, run
// through tsx's loader like the CLI, so a checkout needs no build step.
import { register } from 'tsx/esm/api';

register();
const sdk = await import('./src/sdk/index.ts');

export const {
  OpenSourceAI,
  ChatStream,
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
} = sdk;
