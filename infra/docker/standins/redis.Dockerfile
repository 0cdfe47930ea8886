# Redis from Debian's package, standing in for the `redis` image on a host that cannot pull from a
# hub (CI here): `redis-server` on port 6379, its data in /data.
#   docker build -f infra/docker/standins/redis.Dockerfile -t mlops-redis:7 infra/docker/standins
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data
VOLUME ["/data"]
EXPOSE 6379
CMD ["redis-server"]
