/** Types for build-console.mjs (imported by serve and the test setup). */
export const OUT_ROOT: string;
export function sourceHash(): string;
export function ensureConsole(opts?: { force?: boolean; log?: (message: string) => void }): Promise<string>;
