/** Types for build-console.mjs (imported by serve and the test setup). */
export function outRoot(): string;
export function sourceHash(): string;
export function ensureConsole(opts?: { force?: boolean; log?: (message: string) => void }): Promise<string>;
