/** GET /v1/models and /v1/models/{id}. */
export interface Model {
  id: string;
  object: 'model';
  created: number;
  owned_by: string;
}

export interface ModelList {
  object: 'list';
  data: Model[];
}

/** What a registered model does (ai.models.task). */
export type ModelTask = 'chat' | 'embedding' | 'rerank' | 'moderation';
