# syntax=docker/dockerfile:1
# The leader-elect image: the binary alone on a distroless base, running as nobody (65534).
#
#   docker build -t REGISTRY/leader-elect:0.1.0 .
#
# It runs `leader-elect run ... -- CMD` where CMD is in the image (build yours FROM it, or copy
# /usr/local/bin/leader-elect into yours), and it is the source of the Helm chart's wrap mode, whose
# initContainer copies leader-elect into the user's pod with `leader-elect install /le`.

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p leader-elect --locked \
    && install -D -m 0755 target/release/leader-elect /out/leader-elect

# leader-elect links glibc: distroless/cc (glibc, libgcc; Debian 12 like the build stage).
FROM gcr.io/distroless/cc-debian12
COPY --from=build /out/leader-elect /usr/local/bin/leader-elect
USER 65534:65534
ENTRYPOINT ["/usr/local/bin/leader-elect"]
CMD ["--help"]
