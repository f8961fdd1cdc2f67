# Mosquitto from Debian's package, for deploy/compose.yaml (no registry is
# needed: it starts from the same local Debian base as Vigil's image).
FROM debian:bookworm-slim
RUN apt-get update -q && apt-get install -y -q --no-install-recommends mosquitto \
    && rm -rf /var/lib/apt/lists/* \
    && printf 'listener 1883 0.0.0.0\nallow_anonymous true\npersistence true\npersistence_location /var/lib/mosquitto/\nlog_dest stdout\n' \
        > /etc/mosquitto/compose.conf \
    && install -d -o mosquitto -g mosquitto /var/lib/mosquitto
EXPOSE 1883
CMD ["mosquitto", "-c", "/etc/mosquitto/compose.conf"]
