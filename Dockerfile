# syntax=docker/dockerfile:1
# The oomsnap image: one static binary on `scratch`, plus a CA bundle for
# HTTPS object stores. Runs as UID 65532 on a read-only root filesystem; the
# only writable path it expects is /var/lib/oomsnap (mount a volume there).
#
#   docker build -t oomsnap .
#   docker buildx build --platform linux/amd64,linux/arm64 -t oomsnap .
#   docker buildx build --target binary --output type=local,dest=dist .   # just the binary
#
# The build context is only what .dockerignore lets through (Cargo.toml,
# Cargo.lock, benches/, src/, and docs/configuration.md, which `oomsnap help
# config` compiles in); tests/image.rs builds exactly that with the
# cargo command below. Without a Docker daemon or registry access, see
# deploy/image/Dockerfile.local, whose final stage is this one's, line for
# line.

FROM rust:1.95-bookworm AS build
# musl-tools: aws-lc-sys compiles C, and a static binary needs musl-gcc.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
# The build stage runs on the target platform (natively on the release
# workflow's runners, emulated by buildx elsewhere), so the machine's own
# architecture names the musl target.
RUN rustup target add "$(uname -m)-unknown-linux-musl"
# The cc crate looks for aarch64-linux-musl-gcc to build aws-lc-sys's C for
# aarch64 musl; Debian's musl-tools calls it musl-gcc on every architecture
# (on x86_64, cc tries musl-gcc by itself).
ENV CC_aarch64_unknown_linux_musl=musl-gcc
WORKDIR /src
# Cargo reads every target Cargo.toml declares (the [[bench]]es too) before
# it builds any, so the benches come along although only the binary is built.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
COPY src ./src
COPY docs/configuration.md ./docs/configuration.md
# `sharing=locked`: two platforms built at once would otherwise share one
# target/ whose build scripts are compiled for each machine.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    target="$(uname -m)-unknown-linux-musl" \
 && cargo build --locked --release --target "$target" --bin oomsnap \
 && mkdir -p /out/var-lib-oomsnap/spool \
 && cp "target/$target/release/oomsnap" /etc/ssl/certs/ca-certificates.crt /out/

# The release workflow attaches this binary to the GitHub release.
FROM scratch AS binary
COPY --from=build /out/oomsnap /oomsnap

# The runtime stage: keep it identical to deploy/image/Dockerfile.local's
# (tests/image.rs compares them).
FROM scratch
COPY --from=build /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/oomsnap /usr/local/bin/oomsnap
COPY --from=build --chown=65532:65532 /out/var-lib-oomsnap /var/lib/oomsnap
ENV PATH=/usr/local/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
VOLUME ["/var/lib/oomsnap"]
EXPOSE 9186
ENTRYPOINT ["oomsnap"]
CMD ["run"]
