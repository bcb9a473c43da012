# syntax=docker/dockerfile:1
# Two images, each one binary alone on a distroless base, running as nobody (65534):
#
#   docker build -t REGISTRY/leader-elect:0.1.0 .                                        # the last stage
#   docker build --target claim-coordinator -t REGISTRY/claim-coordinator:0.1.0 .
#
# leader-elect: it runs `leader-elect run ... -- CMD` where CMD is in the image (build yours FROM it, or copy
# /usr/local/bin/leader-elect into yours), and it is the source of the Helm chart's wrap mode, whose
# initContainer copies leader-elect into the user's pod with `leader-elect install /le`.
#
# claim-coordinator: `claim-coordinator run` (deploy/helm/claim-coordinator), and `claim-coordinator crds`.
#
# BuildKit builds only the stages the target needs: each image compiles its own crate.

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS source
WORKDIR /src
COPY . .

FROM source AS build-claim-coordinator
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p claim-coordinator --locked \
    && install -D -m 0755 target/release/claim-coordinator /out/claim-coordinator

FROM source AS build
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p leader-elect --locked \
    && install -D -m 0755 target/release/leader-elect /out/leader-elect

# Both binaries link glibc: distroless/cc (glibc, libgcc; Debian 12 like the build stages).
FROM gcr.io/distroless/cc-debian12 AS claim-coordinator
COPY --from=build-claim-coordinator /out/claim-coordinator /usr/local/bin/claim-coordinator
USER 65534:65534
ENTRYPOINT ["/usr/local/bin/claim-coordinator"]
CMD ["--help"]

# The default target (last): leader-elect.
FROM gcr.io/distroless/cc-debian12 AS leader-elect
COPY --from=build /out/leader-elect /usr/local/bin/leader-elect
USER 65534:65534
ENTRYPOINT ["/usr/local/bin/leader-elect"]
CMD ["--help"]
