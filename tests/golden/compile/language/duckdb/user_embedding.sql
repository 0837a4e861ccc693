-- view user_embedding: the queries `featurestore materialize` runs
-- parameters: $start_us, $end_us (epoch microseconds, UTC)

-- first, the source's database
ATTACH IF NOT EXISTS 'data/warehouse.duckdb' AS "embeddings_db" (READ_ONLY);

-- latest row of each entity
WITH __rows AS MATERIALIZED (SELECT *, row_number() OVER () AS __id
  FROM (SELECT "user_id", __ts, "embedding" AS f0, len("embedding") AS f1
    FROM (SELECT *, (__ts - (((__ts % 300000000) + 300000000) % 300000000)) AS __tile
      FROM (SELECT *, (CASE WHEN "computed_at" >= TIMESTAMP '1678-01-01' AND "computed_at" < TIMESTAMP '2262-01-01' THEN (((epoch_ns(CAST("computed_at" AS TIMESTAMP_NS)) - (((epoch_ns(CAST("computed_at" AS TIMESTAMP_NS)) % 1000) + 1000) % 1000))) // 1000) ELSE epoch_us(CAST("computed_at" AS TIMESTAMP)) END) AS __ts
        FROM (SELECT * REPLACE (CAST("user_id" AS VARCHAR) AS "user_id", CAST("embedding" AS FLOAT[]) AS "embedding")
          FROM (SELECT *, '' AS filename, row_number() OVER () AS file_row_number
            FROM "embeddings_db"."user_embeddings")))
      WHERE __ts <= $end_us))), __last AS (SELECT "user_id", max(__ts) AS __ts, max_by(__ts, __ts, 2) AS __top, arg_max(__id, __ts) AS __id
  FROM __rows
  GROUP BY "user_id") SELECT "user_id", __ts, f0, f1
FROM __rows SEMI JOIN (SELECT __id
  FROM __last
  WHERE len(__top) = 1 OR __top[2] < __ts) USING (__id) UNION ALL SELECT "user_id", __w.ts AS __ts, __w.v0 AS f0, __w.v1 AS f1
FROM (SELECT "user_id", max({'ts': __ts, 'k0': f0 IS NOT NULL, 'v0': f0, 'k1': f1 IS NOT NULL, 'v1': f1}) AS __w
  FROM __rows SEMI JOIN (SELECT "user_id"
    FROM __last
    WHERE len(__top) = 2 AND __top[2] = __ts) USING ("user_id")
  GROUP BY "user_id");
