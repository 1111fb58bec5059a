# syntax=docker/dockerfile:1

# ---- build ----
FROM rust:1-bookworm AS builder
WORKDIR /app

# Dependencies first: this layer is rebuilt only when Cargo.toml or Cargo.lock change.
# Cargo reads every target the manifest declares, so the benchmark's example needs a
# stand-in too, although the release build does not compile it.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src examples \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > examples/baseline.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src examples

# The real sources. COPY keeps the files' own mtimes, which can be older than the dummy
# build, so the crate's own artifacts are removed to force cargo to rebuild it.
COPY src ./src
COPY examples ./examples
RUN rm -rf target/release/.fingerprint/conversation-sessions-* \
        target/release/deps/conversation_sessions-* \
        target/release/deps/libconversation_sessions-* \
    && cargo build --release --locked

# ---- run ----
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app

COPY --from=builder /app/target/release/conversation-sessions /usr/local/bin/conversation-sessions

# The service binds 127.0.0.1 by default; inside a container it must listen on all interfaces.
ENV HOST=0.0.0.0 PORT=3000
EXPOSE 3000
USER app:app
# The binary handles SIGTERM itself: in-flight requests finish before it exits.
ENTRYPOINT ["/usr/local/bin/conversation-sessions"]
