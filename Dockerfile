# Builds the orderflow binaries (sales-api, delivery-api, orderflow). Used by docker-compose.yml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Two builds: built together, cargo would unify features and link orderflow's dev issuer into the services.
RUN cargo build --release --locked -p sales-api -p delivery-api && cargo build --release --locked -p orderflow

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/sales-api /src/target/release/delivery-api /src/target/release/orderflow /usr/local/bin/
USER 65532:65532
