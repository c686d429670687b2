/** Compiles src/ to dist/ from empty; throws when tsc fails (and leaves no dist/). */
export function build(): void;
/** Whether dist/ is missing or older than src/ and the tsconfigs. */
export function isStale(): boolean;
/** Builds when stale. */
export function ensureBuilt(): void;
