# pgrelay container image: a static-enough binary on a slim Debian base,
# running as a non-root user, configured by /etc/pgrelay/pgrelay.toml.
#
#   docker build -t pgrelay .
#   docker run -v $PWD/pgrelay.toml:/etc/pgrelay/pgrelay.toml -p 5432:5432 -p 5433:5433 -p 9930:9930 pgrelay

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin pgrelay \
 && strip target/release/pgrelay

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin pgrelay \
 && mkdir -p /etc/pgrelay
COPY --from=build /src/target/release/pgrelay /usr/local/bin/pgrelay
COPY config/pgrelay.toml /etc/pgrelay/pgrelay.toml
USER 10001:10001
EXPOSE 5432 5433 9930
# `pgrelay probe` is a built-in HTTP GET, so the image needs no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
  CMD ["pgrelay", "probe", "http://127.0.0.1:9930/livez"]
# SIGTERM: stop accepting, let clients finish, exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["pgrelay"]
CMD ["run", "-c", "/etc/pgrelay/pgrelay.toml", "--log-format", "json"]
