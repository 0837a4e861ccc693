# The feature server image: serving needs no Flink, DuckDB or compiler.
# Installed with the versions CI tests (.ci/constraints.txt).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY .ci/constraints.txt .ci/constraints.txt
COPY featurestore featurestore
COPY dsl dsl
COPY serving serving
COPY streaming streaming
RUN pip install --no-cache-dir -c .ci/constraints.txt '.[server,client]'
EXPOSE 6566
CMD ["featurestore", "serve", "--repo", "/repo", "--host", "0.0.0.0"]
