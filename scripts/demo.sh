#!/usr/bin/env bash
# The main job on the embedded default: start Triton on model_repository/, publish the
# sample models (a small ONNX graph and the all-MiniLM-L6-v2 sentence embedder), put a
# stable endpoint in front of each, load them, and show how to call them.
set -euo pipefail
cd "$(dirname "$0")/.."
export TRITONCTL_REPO="${TRITONCTL_REPO:-model_repository}"
HTTP_PORT="${HTTP_PORT:-8000}"
mkdir -p "$TRITONCTL_REPO"

if tritonctl server status >/dev/null 2>&1; then
  echo "tritonserver already running for $TRITONCTL_REPO"
else
  tritonctl server start --http-port "$HTTP_PORT" --grpc-port "${GRPC_PORT:-8001}" --metrics-port "${METRICS_PORT:-8002}"
fi

publish_once() {  # NAME ARTIFACT [OPTIONS...]: publish unless a version exists already
  local name=$1; shift
  if tritonctl versions "$name" --json 2>/dev/null | grep -q '"version"'; then
    echo "$name: already published"
  else
    tritonctl publish "$name" "$@" --smoke-test --label source=demo
  fi
}

linear=$(python scripts/make_samples.py .samples linear)
minilm=$(python scripts/make_samples.py .samples minilm)
publish_once linear "$linear" --max-batch-size 8
publish_once minilm "$minilm"

tritonctl load linear
tritonctl load minilm
tritonctl endpoint switch embed --to minilm
tritonctl endpoint switch linear-live --to linear:1
tritonctl ls

cat <<MSG

Triton is serving on http://localhost:$HTTP_PORT (gRPC :${GRPC_PORT:-8001}, metrics :${METRICS_PORT:-8002}).
Embed two sentences through the stable endpoint "embed":

  curl -s localhost:$HTTP_PORT/v2/models/embed/infer -d '{"inputs":[{"name":"TEXT","datatype":"BYTES","shape":[2,1],"data":["hello world","tritonctl serves models"]}]}'

Call the linear model (pinned to its version 1: /v2/models/linear/versions/1/infer):

  curl -s localhost:$HTTP_PORT/v2/models/linear-live/infer -d '{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}'

Stop the server with: tritonctl server stop
MSG
