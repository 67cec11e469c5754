# Herald's image: both binaries, static (musl), on a distroless base. Not built in CI (no
# container engine there); build it with `docker build -t herald .` or any OCI builder.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
      --bin herald-controller --bin herald-speaker

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/herald-controller /herald-controller
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/herald-speaker /herald-speaker
# The controller runs as this user; the chart runs the speaker as root with NET_RAW only.
USER 65532:65532
ENTRYPOINT ["/herald-controller"]
