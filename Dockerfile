# syntax=docker/dockerfile:1
# ODS Media production image: `odsmedia serve` as a non-root user.
# Needs DATABASE_URL, REDIS_URL and ODS_SECRET_KEY at run time.

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# A C compiler for the packet path's compiled send loop (odsmedia/media/_fanout.c; the
# install falls back to the pure-Python loop without it, at about twice the CPU per viewer).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/odsmedia
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY odsmedia ./odsmedia
COPY signaling ./signaling
COPY recorder ./recorder
COPY web ./web
RUN /opt/odsmedia/bin/pip install .

FROM python:3.11-slim-bookworm AS runtime
RUN groupadd --system ods && useradd --system --gid ods --home-dir /var/lib/odsmedia --create-home ods
COPY --from=build /opt/odsmedia /opt/odsmedia
COPY config /etc/odsmedia
ENV PATH=/opt/odsmedia/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ODS_HTTP_HOST=0.0.0.0 \
    ODS_HTTP_PORT=8080 \
    ODS_DATA_DIR=/var/lib/odsmedia \
    ODS_LOG_FORMAT=json
USER ods
WORKDIR /var/lib/odsmedia
VOLUME ["/var/lib/odsmedia"]
# HTTP (signaling, WHIP/WHEP, replay, pages, /metrics).
EXPOSE 8080/tcp
# WebRTC media: aioice binds ephemeral UDP ports; run with
#   --sysctl net.ipv4.ip_local_port_range="40000 40999" -p 40000-40999:40000-40999/udp
# (or host networking) and set ODS_ICE_ADDRESSES / ODS_ICE_ANNOUNCED_ADDRESS.
EXPOSE 40000-40999/udp
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
CMD ["odsmedia", "serve"]
