# Container image for `tern serve`: a Swift build stage, then a small Debian runtime holding only the binary,
# the shared libraries it links (OpenSSL, zlib, the C++ runtime) and a health probe. The model is not in the
# image: mount a directory of GGUF files at /models (see deploy/README.md).
#
#   deploy/fetch-model          # copies the default model into deploy/models
#   docker build -t tern .
#   docker run --rm -p 8080:8080 -v "$PWD/deploy/models:/models:ro" tern

# The toolchain the project is developed with (Swift 6.3); Package.swift needs tools version 6.0 or later.
# Both base images can be replaced (--build-arg) by local ones: scripts/container-check builds them itself
# where no registry is reachable.
ARG SWIFT_IMAGE=swift:6.3-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${SWIFT_IMAGE} AS build
# The headers and pkg-config files of the two system libraries Package.swift declares (COpenSSL, CZlib).
# Versions are not pinned: they move with Debian's security updates and old ones leave the archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libssl-dev zlib1g-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
# Dependencies first, so that editing the sources does not fetch swift-log again.
COPY Package.* ./
RUN swift package resolve
COPY . .
# The Swift runtime and Foundation are linked statically, so the runtime image needs no Swift toolchain.
RUN swift build -c release --static-swift-stdlib --product tern \
    && install -D -m 0755 "$(swift build -c release --static-swift-stdlib --show-bin-path)/tern" /out/tern \
    && install -D -m 0755 deploy/healthcheck /out/tern-healthcheck

FROM ${RUNTIME_IMAGE}
# What `ldd tern` lists beyond libc: libssl3/libcrypto (TLS), zlib1g (gzip responses), and the C++ runtime
# that the statically linked Foundation needs (libstdc++6, libgcc-s1; already in the base, named so they stay).
# Not pinned, for the same reason as above.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libssl3 zlib1g libstdc++6 libgcc-s1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tern \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin tern \
    && mkdir /models
COPY --from=build /out/ /usr/local/bin/
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Fail the build here, not at start-up, if the binary links a library the runtime stage lacks.
RUN ! ldd /usr/local/bin/tern | grep "not found"

ENV TERN_MODEL=/models/SmolLM2-135M-Instruct.Q4_1.gguf \
    TERN_HOST=0.0.0.0 \
    TERN_PORT=8080
VOLUME ["/models"]
USER 10001:10001
EXPOSE 8080
# tern drains in-flight requests on SIGTERM (up to --drain-timeout, 30 s): give `docker stop -t 35` or
# compose's stop_grace_period at least that much.
STOPSIGNAL SIGTERM
# /health answers 503 until the model is loaded; loading a small model takes seconds, a large one longer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["/usr/local/bin/tern-healthcheck"]
ENTRYPOINT ["/usr/local/bin/tern"]
CMD ["serve"]
