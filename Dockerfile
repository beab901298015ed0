# microinit base image for microcontainers: busybox (as applet links, so `docker exec -ti C sh` works) and the
# static microinit as PID 1, FROM scratch. App images build FROM it and add only their app and the symlinks into
# the runtime volume (see examples/node-hello/ and scripts/filebox.sh).
#
# Build it with scripts/build-images.sh. That script builds microinit (static, musl) and fetches Debian's
# busybox-static BEFORE `docker build`, then stages this context:
#     rootfs/     this repository's rootfs/ (directory layout, /etc files), without the .keep placeholders
#     busybox     /bin/busybox from Debian's busybox-static
#     microinit   target/dist/microinit (scripts/build.sh), or target/dist/microinit-https for the TLS
#                 variant PREFIX/base-https (same Dockerfile, the `--features https` build: rustls + ring)
# Why not a build stage: the machines this project builds and tests on run a Docker engine with no registry,
# so there is no rust:* or debian:* image to build in; everything is FROM scratch. With a registry, the
# equivalent multi-stage build is:
#
#     FROM rust:1-bookworm AS build
#     RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y busybox-static
#     COPY . /src
#     RUN cd /src && cargo build --release --target x86_64-unknown-linux-musl
#     FROM scratch
#     COPY rootfs/ /
#     COPY --from=build /bin/busybox /bin/busybox
#     COPY --from=build /src/target/x86_64-unknown-linux-musl/release/microinit /sbin/microinit
#     ... then the RUN/ENV/ENTRYPOINT lines below.
FROM scratch
COPY rootfs/ /
COPY busybox /bin/busybox
COPY microinit /sbin/microinit
# Applet links (symlinks to /bin/busybox) at busybox's own paths; /tmp world-writable with the sticky bit.
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s && /bin/busybox chmod 1777 /tmp"]
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["/sbin/microinit", "--"]
CMD ["sh"]
