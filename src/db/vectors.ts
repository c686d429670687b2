/** Embedding vectors as ai.requests.vectors holds them (migrations/0018_embedding_vectors.sql). */

/** n vectors from their little-endian float32 bytes (ai.requests.vectors); null if they do not divide evenly. */
export function splitVectors(bytes: Buffer | null | undefined, n: number): Float32Array[] | null {
  if (!bytes || n === 0 || bytes.length % (4 * n) !== 0 || bytes.length === 0) return null;
  // A copy onto an aligned buffer (a Buffer from the pg parser may start at any byte offset).
  const all = new Float32Array(bytes.length / 4);
  new Uint8Array(all.buffer).set(bytes);
  const dims = all.length / n;
  return Array.from({ length: n }, (_, i) => all.subarray(i * dims, (i + 1) * dims));
}
