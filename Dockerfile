# One image for every Switchyard process: `migrate`, `serve`, `worker`, `up`.
FROM node:20-bookworm-slim
WORKDIR /app
# onnxruntime-node's CPU build ships in the package; GPU images build with ONNXRUNTIME_NODE_INSTALL=cuda12.
ARG ONNXRUNTIME_NODE_INSTALL=skip
ENV ONNXRUNTIME_NODE_INSTALL=${ONNXRUNTIME_NODE_INSTALL} NODE_ENV=production \
    SWITCHYARD_CACHE_DIR=/models-cache HOST=0.0.0.0 PORT=8080
COPY package.json package-lock.json .npmrc ./
RUN npm install --omit=dev --no-audit --no-fund
COPY bin ./bin
COPY src ./src
COPY migrations ./migrations
COPY sql ./sql
COPY scripts ./scripts
EXPOSE 8080
ENTRYPOINT ["node", "bin/switchyard.mjs"]
CMD ["up"]
