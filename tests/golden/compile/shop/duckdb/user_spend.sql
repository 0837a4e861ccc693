-- view user_spend: the queries `featurestore materialize` runs
-- parameters: $start_us, $end_us (epoch microseconds, UTC)

-- tiles: one row per entity and tile, one state per aggregation
SELECT "user_id", __tile, count(i0_row) AS s0_n, sum(i1_hi) AS s1_h, sum(i1_lo) AS s1_l, count(i1_out63) AS s1_n_out, count(i4_value) AS s4_n, sum(i4_hi) AS s4_h, sum(i4_lo) AS s4_l, count(i4_out63) AS s4_n_out, max(i5_value) AS s5_v, count(i6_row) AS s6_n
FROM (SELECT "user_id", __tile, __ts, 1 AS i0_row, CASE WHEN abs("amount") < 9223372036854775808.0::DOUBLE THEN CAST(trunc("amount") AS BIGINT) END AS i1_hi, CASE WHEN abs("amount") < 9223372036854775808.0::DOUBLE THEN CAST(trunc(("amount" - trunc("amount")) * 4611686018427387904.0::DOUBLE) AS BIGINT) END AS i1_lo, CASE WHEN NOT (abs("amount") < 9223372036854775808.0::DOUBLE) THEN 1 END AS i1_out63, (CAST("amount" AS DOUBLE) + 0.0) AS i4_value, CASE WHEN abs("amount") < 9223372036854775808.0::DOUBLE THEN CAST(trunc("amount") AS BIGINT) END AS i4_hi, CASE WHEN abs("amount") < 9223372036854775808.0::DOUBLE THEN CAST(trunc(("amount" - trunc("amount")) * 4611686018427387904.0::DOUBLE) AS BIGINT) END AS i4_lo, CASE WHEN NOT (abs("amount") < 9223372036854775808.0::DOUBLE) THEN 1 END AS i4_out63, (CAST("amount" AS DOUBLE) + 0.0) AS i5_value, CASE WHEN (("amount" >= 100)) IS TRUE THEN 1 END AS i6_row
  FROM (SELECT *, (__ts - (((__ts % 300000000) + 300000000) % 300000000)) AS __tile
    FROM (SELECT *, (CASE WHEN "event_time" >= TIMESTAMP '1678-01-01' AND "event_time" < TIMESTAMP '2262-01-01' THEN (((epoch_ns(CAST("event_time" AS TIMESTAMP_NS)) - (((epoch_ns(CAST("event_time" AS TIMESTAMP_NS)) % 1000) + 1000) % 1000))) // 1000) ELSE epoch_us(CAST("event_time" AS TIMESTAMP)) END) AS __ts
      FROM (SELECT * REPLACE (CAST("user_id" AS VARCHAR) AS "user_id", CAST("item_id" AS BIGINT) AS "item_id", CAST("amount" AS DOUBLE) AS "amount", CAST("category" AS VARCHAR) AS "category")
        FROM read_parquet('data/purchases/*.parquet', filename = true, file_row_number = true)))
    WHERE __ts <= $end_us AND __ts >= $start_us AND (("amount" > 0)) IS TRUE))
GROUP BY "user_id", __tile;

-- latest row of each entity
WITH __rows AS MATERIALIZED (SELECT *, row_number() OVER () AS __id
  FROM (SELECT "user_id", __ts, "category" AS f0
    FROM (SELECT *, (__ts - (((__ts % 300000000) + 300000000) % 300000000)) AS __tile
      FROM (SELECT *, (CASE WHEN "event_time" >= TIMESTAMP '1678-01-01' AND "event_time" < TIMESTAMP '2262-01-01' THEN (((epoch_ns(CAST("event_time" AS TIMESTAMP_NS)) - (((epoch_ns(CAST("event_time" AS TIMESTAMP_NS)) % 1000) + 1000) % 1000))) // 1000) ELSE epoch_us(CAST("event_time" AS TIMESTAMP)) END) AS __ts
        FROM (SELECT * REPLACE (CAST("user_id" AS VARCHAR) AS "user_id", CAST("item_id" AS BIGINT) AS "item_id", CAST("amount" AS DOUBLE) AS "amount", CAST("category" AS VARCHAR) AS "category")
          FROM read_parquet('data/purchases/*.parquet', filename = true, file_row_number = true)))
      WHERE __ts <= $end_us AND (("amount" > 0)) IS TRUE))), __last AS (SELECT "user_id", max(__ts) AS __ts, max_by(__ts, __ts, 2) AS __top, arg_max(__id, __ts) AS __id
  FROM __rows
  GROUP BY "user_id") SELECT "user_id", __ts, f0
FROM __rows SEMI JOIN (SELECT __id
  FROM __last
  WHERE len(__top) = 1 OR __top[2] < __ts) USING (__id) UNION ALL SELECT "user_id", __w.ts AS __ts, __w.v0 AS f0
FROM (SELECT "user_id", max({'ts': __ts, 'k0': f0 IS NOT NULL, 'v0': f0}) AS __w
  FROM __rows SEMI JOIN (SELECT "user_id"
    FROM __last
    WHERE len(__top) = 2 AND __top[2] = __ts) USING ("user_id")
  GROUP BY "user_id");
