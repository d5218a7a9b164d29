# Builds the orderflow binaries. Used by docker-compose.yml on a laptop with Docker.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p orderflow

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/orderflow /usr/local/bin/orderflow
USER 65532:65532
ENTRYPOINT ["orderflow"]
