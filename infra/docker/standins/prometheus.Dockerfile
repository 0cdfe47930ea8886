# Prometheus from Debian's package, standing in for the `prom/prometheus` image on a host that
# cannot pull from a hub (CI here), with its interface: the server as the entrypoint, the
# configuration at /etc/prometheus/prometheus.yml, the data in /prometheus, port 9090.
#   docker build -f infra/docker/standins/prometheus.Dockerfile -t mlops-prometheus:2 infra/docker/standins
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
VOLUME ["/prometheus"]
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
