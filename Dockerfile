# One image for every Switchyard process: `migrate`, `serve`, `worker`, `up`.
# test/package/docker.test.ts checks, without a Docker engine, that the final image holds exactly
# the files of `npm pack` (plus production node_modules) and runs as a non-root user.

# Build stage: every dependency (TypeScript among them), `npm ci`'s prepare compiles src/ to
# dist/, then the dev dependencies are pruned away.
FROM node:20-bookworm-slim AS build
WORKDIR /app
# onnxruntime-node's CPU build ships in the package; GPU images build with ONNXRUNTIME_NODE_INSTALL=cuda12.
ARG ONNXRUNTIME_NODE_INSTALL=skip
ENV ONNXRUNTIME_NODE_INSTALL=${ONNXRUNTIME_NODE_INSTALL}
COPY package.json package-lock.json .npmrc tsconfig.json tsconfig.build.json ./
COPY scripts/build.mjs scripts/build-console.mjs scripts/build-console.d.mts ./scripts/
COPY src ./src
COPY console ./console
RUN npm ci --no-audit --no-fund && npm prune --omit=dev --no-audit --no-fund

# Runtime stage: the package's files, owned by root and read-only to the user that runs them.
FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production SWITCHYARD_CACHE_DIR=/models-cache HOST=0.0.0.0 PORT=8080
COPY package.json README.md ./
COPY bin ./bin
COPY migrations ./migrations
COPY sql ./sql
# build-console.mjs finds the console built into dist/console (serve imports it).
COPY scripts/ensure-pgvector.sh scripts/build-console.mjs scripts/README.md ./scripts/
COPY --from=build /app/dist ./dist
COPY --from=build /app/node_modules ./node_modules
# The downloaded-models cache is the one place the process writes (a named volume inherits this owner).
RUN mkdir -p /models-cache && chown node:node /models-cache
USER node
EXPOSE 8080
ENTRYPOINT ["node", "bin/switchyard.mjs"]
CMD ["up"]
