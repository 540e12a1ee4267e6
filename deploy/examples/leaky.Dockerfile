# The Go app the integration tests OOM-kill (tests/leaky: stdlib only,
# net/http/pprof on 127.0.0.1:6060, leaks through main.(*leakyCache).put),
# as an image for the demo in docs/kubernetes.md. The build context is
# tests/leaky:
#
#   docker build -f deploy/examples/leaky.Dockerfile -t leaky:demo tests/leaky

FROM golang:1.22 AS build
WORKDIR /src
COPY go.mod main.go ./
RUN CGO_ENABLED=0 GOTOOLCHAIN=local GOPROXY=off go build -o /leaky .

FROM scratch
COPY --from=build /leaky /leaky
USER 65532:65532
ENTRYPOINT ["/leaky"]
