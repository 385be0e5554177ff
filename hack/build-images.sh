#!/usr/bin/env bash
# Builds Portico's two images from images/Dockerfile (needs docker with BuildKit, which this
# repository's test machines do not have). The names are the chart's defaults
# (charts/portico/values.yaml); the tag is the version in pyproject.toml, the chart's appVersion.
# tests/unit/packaging/test_images.py checks that all three agree.
set -euo pipefail
cd "$(dirname "$0")/.."

PORTICO_IMAGE="${PORTICO_IMAGE:-ghcr.io/portico-lb/portico}"
GATEWAY_IMAGE="${GATEWAY_IMAGE:-ghcr.io/portico-lb/portico-gateway}"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -1)"

docker build -f images/Dockerfile --target portico -t "$PORTICO_IMAGE:$version" .
docker build -f images/Dockerfile --target gateway -t "$GATEWAY_IMAGE:$version" .
