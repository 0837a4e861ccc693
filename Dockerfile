# The feature server image: serving needs no Flink, DuckDB or compiler.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY featurestore featurestore
COPY dsl dsl
COPY serving serving
COPY streaming streaming
RUN pip install --no-cache-dir '.[server,client]'
EXPOSE 6566
CMD ["featurestore", "serve", "--repo", "/repo", "--host", "0.0.0.0"]
