# syntax=docker/dockerfile:1
# The team services' image: infra/compose.yaml runs `mlflow server` and `prefect server start`
# from it. mlflow and prefect at their requirements.lock pins, so servers and clients match,
# with the PostgreSQL drivers (psycopg2 for MLflow, asyncpg for Prefect) and boto3 for MLflow's
# S3 artifacts; no torch.
FROM python:3.11-slim
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
COPY requirements.lock /tmp/requirements.lock
# -c: each package at the lock's pin, fastapi<0.155 among them (prefect 3.8's server needs it).
RUN uv pip install --system --no-cache -c /tmp/requirements.lock \
    mlflow prefect psycopg2-binary asyncpg boto3
