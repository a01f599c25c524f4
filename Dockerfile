# Build the manager binary. (Not built in this project's CI: its machines run
# no container engine. The binary itself is built and tested by `make test`
# and `make build`.)
FROM golang:1.26 AS builder
ARG TARGETOS
ARG TARGETARCH
# Stamped like make build (make docker-build passes them); kubectl tokenkeeper
# version and tokenkeeper_build_info report them.
ARG VERSION=dev
ARG REVISION=unknown
WORKDIR /workspace
COPY go.mod go.sum ./
RUN go mod download
COPY api/ api/
COPY cmd/ cmd/
COPY controllers/ controllers/
COPY internal/ internal/
RUN CGO_ENABLED=0 GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} go build -trimpath -buildvcs=false \
    -ldflags="-s -w -X github.com/tokenkeeper/tokenkeeper/internal/version.version=${VERSION} -X github.com/tokenkeeper/tokenkeeper/internal/version.revision=${REVISION}" \
    -o manager ./cmd

# A static, non-root base: the Deployment runs with a read-only root
# filesystem and drops every capability.
FROM gcr.io/distroless/static:nonroot
WORKDIR /
COPY --from=builder /workspace/manager .
USER 65532:65532
ENTRYPOINT ["/manager"]
