# syntax=docker/dockerfile:1
# The oomsnap image: one static binary on `scratch`, plus a CA bundle for
# HTTPS object stores. Runs as UID 65532 on a read-only root filesystem; the
# only writable path it expects is /var/lib/oomsnap (mount a volume there).
#
#   docker build -t oomsnap .
#   docker buildx build --platform linux/amd64,linux/arm64 -t oomsnap .
#
# Without a Docker daemon or registry access, see deploy/image/Dockerfile.local.

FROM rust:1.95-bookworm AS build
# musl-tools: aws-lc-sys compiles C, and a static binary needs musl-gcc.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
# The build stage runs on the target platform (buildx emulates it), so the
# machine's own architecture names the musl target.
RUN rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-musl" \
 && cargo build --release --locked --target "$target" \
 && cp "target/$target/release/oomsnap" /oomsnap
# The spool's parent, owned by the runtime user, for runs without a volume.
RUN mkdir -p /rootfs/var/lib/oomsnap/spool \
 && chown -R 65532:65532 /rootfs/var/lib/oomsnap

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /oomsnap /usr/local/bin/oomsnap
COPY --from=build --chown=65532:65532 /rootfs/var/lib/oomsnap /var/lib/oomsnap
ENV PATH=/usr/local/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
VOLUME ["/var/lib/oomsnap"]
EXPOSE 9186
ENTRYPOINT ["oomsnap"]
CMD ["run"]
