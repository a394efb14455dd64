# Builds redis-handover in a Rust image and runs it from a small Debian image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin redis-handover

FROM debian:bookworm-slim
COPY --from=build /src/target/release/redis-handover /usr/local/bin/redis-handover
EXPOSE 6380 7380
ENTRYPOINT ["redis-handover"]
CMD ["--listen", "0.0.0.0:6380", "--admin", "127.0.0.1:7380", "--old", "old:6379", "--new", "new:6379"]
