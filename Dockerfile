# syntax=docker/dockerfile:1
#
# dingproxy container image.
#   docker build --build-arg VERSION=$(git describe --tags --always) -t dingproxy .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -v "$PWD/configs:/etc/dingproxy:ro" \
#     -e DINGPROXY_LISTEN=0.0.0.0:8080 -e DINGPROXY_ADMIN_LISTEN=0.0.0.0:9090 \
#     -e DINGPROXY_APP_KEY -e DINGPROXY_APP_SECRET dingproxy
# The default CMD reads /etc/dingproxy/dingproxy.yaml, so mount a directory
# holding it there, or pass other arguments (no -config: built-in defaults).

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
ARG VERSION=dev
WORKDIR /src

# Dependencies first: this layer is reused until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download

COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/dingproxy ./cmd/dingproxy

# Distroless static: CA certificates and tzdata, no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/dingproxy /dingproxy
# Numeric, not the name nonroot: with runAsNonRoot and no runAsUser, kubelet
# refuses an image whose user it cannot verify as non-root without reading the
# image's /etc/passwd. The pod sets runAsUser/runAsGroup 65532 as well
# (deploy/k8s/deployment.yaml).
USER 65532:65532
# 8080: the proxy; 9090: /metrics, /healthz, /readyz.
EXPOSE 8080 9090
ENTRYPOINT ["/dingproxy"]
CMD ["-config", "/etc/dingproxy/dingproxy.yaml"]
