# entropykem binaries: ekem-issuer, ekem-device, ekemctl, mkcreds.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
# .dockerignore keeps credentials, keys, stores and state out of this copy.
COPY . .
# docker build --build-arg VERSION=v1.1.0 . names the release in "version".
ARG VERSION=
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-X github.com/entropykem/entropykem/internal/buildinfo.Version=${VERSION}" \
    -o /out/ ./cmd/ekem-issuer ./cmd/ekem-device ./cmd/ekemctl ./broker-config/mkcreds

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin ekem
COPY --from=build /out/ /usr/local/bin/
COPY broker-config/mosquitto.conf broker-config/acl /opt/entropykem/broker-config/
COPY LICENSE /usr/share/doc/entropykem/LICENSE
USER ekem
ENTRYPOINT []
