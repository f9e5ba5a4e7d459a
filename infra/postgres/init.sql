-- Run by the postgres image on its first start (an empty data volume). The image creates
-- POSTGRES_DB (mlflow); Prefect gets a database of its own: both keep an alembic_version table.
CREATE DATABASE prefect;
