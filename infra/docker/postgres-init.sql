-- Run once, on a new cluster (the postgres image's /docker-entrypoint-initdb.d): one database per
-- server, each with its own tables and migration history (both keep an alembic_version table).
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
