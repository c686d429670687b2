/** Environment contract (DESIGN.md): read once, in one place. */
export interface Config {
  databaseUrl: string;
  host: string;
  port: number;
  modelsDir: string | undefined;
  hfToken: string | undefined;
}

export const DEFAULT_DATABASE_URL = 'postgres://postgres@127.0.0.1:5432/switchyard';

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const port = Number(env.PORT ?? 8080);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`PORT must be a port number, got ${env.PORT}`);
  return {
    databaseUrl: env.DATABASE_URL || DEFAULT_DATABASE_URL,
    host: env.HOST || '127.0.0.1',
    port,
    modelsDir: env.SWITCHYARD_MODELS_DIR || undefined,
    hfToken: env.HF_TOKEN || undefined,
  };
}
