# syntax=docker/dockerfile:1
#
# cutover in a container: build with the Rust toolchain, run from a slim image as a non-root
# user. The running image needs no network access of its own (nothing is downloaded at
# start): it only listens and talks to the model servers it fronts.
#
#   docker build -t cutover .
#   docker run --rm -v "$PWD/cutover.toml:/etc/cutover/cutover.toml:ro" -v cutover-state:/var/lib/cutover \
#     -p 8080:8080 cutover
#
# In a container the config's listeners must not be loopback-only to be reached from outside:
# `listen = "0.0.0.0:8080"`; the admin API stays on loopback unless `allow_remote = true` (use
# `docker exec CONTAINER cutover --config /etc/cutover/cutover.toml status`). Writable paths go
# under /var/lib/cutover: `[store] path = "/var/lib/cutover/cutover.db"`,
# `[admin] token_file = "/var/lib/cutover/admin.token"`. Static environments (model servers in
# their own containers) fit this image; managed ones need the model server inside it (build
# FROM your model server's image instead of debian:bookworm-slim).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# --locked: exactly the dependency versions of Cargo.lock. The bundled SQLite is compiled with
# the image's C compiler.
RUN cargo install --locked --path crates/cutover --root /out

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 cutover \
 && useradd --system --uid 10001 --gid cutover --home-dir /var/lib/cutover --create-home \
      --shell /usr/sbin/nologin cutover \
 && mkdir -p /etc/cutover
COPY --from=build /out/bin/cutover /out/bin/mock-model /usr/local/bin/
USER cutover:cutover
WORKDIR /var/lib/cutover
VOLUME ["/var/lib/cutover"]
EXPOSE 8080 9901
# SIGTERM drains (30 s by default, `--grace`): give `docker stop` longer, e.g. `-t 45`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["cutover"]
CMD ["serve", "--config", "/etc/cutover/cutover.toml", "--log-format", "json"]
