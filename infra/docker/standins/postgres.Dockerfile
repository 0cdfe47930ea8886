# PostgreSQL from Debian's package, standing in for the `postgres` image on a host that cannot pull
# from a hub (CI here). It keeps that image's interface, which infra/docker/compose.yaml relies on:
# POSTGRES_USER, POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE, PGDATA, the *.sql files of
# /docker-entrypoint-initdb.d run once on a new cluster, port 5432, `pg_isready`.
#   docker build -f infra/docker/standins/postgres.Dockerfile -t mlops-postgres:15 infra/docker/standins
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# no cluster at install time: the entrypoint makes one in PGDATA, on the volume
RUN mkdir -p /etc/postgresql-common \
    && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf \
    && apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /docker-entrypoint-initdb.d \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY --chmod=755 postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER postgres
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
