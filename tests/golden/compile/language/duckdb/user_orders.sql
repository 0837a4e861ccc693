-- view user_orders: the queries `featurestore materialize` runs
-- parameters: $start_us, $end_us (epoch microseconds, UTC)

-- tiles: one row per entity and tile, one state per aggregation
SELECT "user_id", __tile, count(i0_row) AS s0_n, sum(i3_hi) AS s3_h, sum(i3_lo) AS s3_l, count(i3_out63) AS s3_n_out, count(i5_value) AS s5_n, sum(i5_hi) AS s5_h, sum(i5_lo) AS s5_l, count(i5_out63) AS s5_n_out, min(i6_value) AS s6_v, max(i7_value) AS s7_v, count(i8_row) AS s8_n
FROM (SELECT "user_id", __tile, __ts, 1 AS i0_row, CASE WHEN abs(("price" * "quantity")) < 9223372036854775808.0::DOUBLE THEN CAST(trunc(("price" * "quantity")) AS BIGINT) END AS i3_hi, CASE WHEN abs(("price" * "quantity")) < 9223372036854775808.0::DOUBLE THEN CAST(trunc((("price" * "quantity") - trunc(("price" * "quantity"))) * 4611686018427387904.0::DOUBLE) AS BIGINT) END AS i3_lo, CASE WHEN NOT (abs(("price" * "quantity")) < 9223372036854775808.0::DOUBLE) THEN 1 END AS i3_out63, (CAST("price" AS DOUBLE) + 0.0) AS i5_value, CASE WHEN abs("price") < 9223372036854775808.0::DOUBLE THEN CAST(trunc("price") AS BIGINT) END AS i5_hi, CASE WHEN abs("price") < 9223372036854775808.0::DOUBLE THEN CAST(trunc(("price" - trunc("price")) * 4611686018427387904.0::DOUBLE) AS BIGINT) END AS i5_lo, CASE WHEN NOT (abs("price") < 9223372036854775808.0::DOUBLE) THEN 1 END AS i5_out63, (CAST("price" AS DOUBLE) + 0.0) AS i6_value, (CAST("price" AS DOUBLE) + 0.0) AS i7_value, CASE WHEN (("coupon" IS NOT NULL)) IS TRUE THEN 1 END AS i8_row
  FROM (SELECT *, (__ts - (((__ts % 3600000000) + 3600000000) % 3600000000)) AS __tile
    FROM (SELECT *, (CASE WHEN "ordered_at" >= TIMESTAMP '1678-01-01' AND "ordered_at" < TIMESTAMP '2262-01-01' THEN (((epoch_ns(CAST("ordered_at" AS TIMESTAMP_NS)) - (((epoch_ns(CAST("ordered_at" AS TIMESTAMP_NS)) % 1000) + 1000) % 1000))) // 1000) ELSE epoch_us(CAST("ordered_at" AS TIMESTAMP)) END) AS __ts
      FROM (SELECT * REPLACE (CAST("user_id" AS VARCHAR) AS "user_id", CAST("item_id" AS BIGINT) AS "item_id", CAST("price" AS DOUBLE) AS "price", CAST("quantity" AS BIGINT) AS "quantity", CAST("coupon" AS VARCHAR) AS "coupon", CAST("country" AS VARCHAR) AS "country")
        FROM read_parquet('data/orders/*.parquet', filename = true, file_row_number = true)))
    WHERE __ts <= $end_us AND __ts >= $start_us AND ((("quantity" > 0) AND ("country" IS NOT NULL))) IS TRUE))
GROUP BY "user_id", __tile;

-- latest row of each entity
WITH __rows AS MATERIALIZED (SELECT *, row_number() OVER () AS __id
  FROM (SELECT "user_id", __ts, upper(coalesce("country", 'unknown')) AS f0, (CASE WHEN (("price" * "quantity") >= 100) THEN 'large' WHEN (("price" * "quantity") >= 20) THEN 'medium' ELSE 'small' END) AS f1, (CASE WHEN ("coupon" IS NULL) THEN FALSE ELSE TRUE END) AS f2, hour("ordered_at") AS f3, (isodow("ordered_at") >= 6) AS f4, round(("price" * CAST("quantity" AS DOUBLE)), 2) AS f5, (lower("country") || '-' || CAST("item_id" AS VARCHAR)) AS f6
    FROM (SELECT *, (__ts - (((__ts % 3600000000) + 3600000000) % 3600000000)) AS __tile
      FROM (SELECT *, (CASE WHEN "ordered_at" >= TIMESTAMP '1678-01-01' AND "ordered_at" < TIMESTAMP '2262-01-01' THEN (((epoch_ns(CAST("ordered_at" AS TIMESTAMP_NS)) - (((epoch_ns(CAST("ordered_at" AS TIMESTAMP_NS)) % 1000) + 1000) % 1000))) // 1000) ELSE epoch_us(CAST("ordered_at" AS TIMESTAMP)) END) AS __ts
        FROM (SELECT * REPLACE (CAST("user_id" AS VARCHAR) AS "user_id", CAST("item_id" AS BIGINT) AS "item_id", CAST("price" AS DOUBLE) AS "price", CAST("quantity" AS BIGINT) AS "quantity", CAST("coupon" AS VARCHAR) AS "coupon", CAST("country" AS VARCHAR) AS "country")
          FROM read_parquet('data/orders/*.parquet', filename = true, file_row_number = true)))
      WHERE __ts <= $end_us AND ((("quantity" > 0) AND ("country" IS NOT NULL))) IS TRUE))), __last AS (SELECT "user_id", max(__ts) AS __ts, max_by(__ts, __ts, 2) AS __top, arg_max(__id, __ts) AS __id
  FROM __rows
  GROUP BY "user_id") SELECT "user_id", __ts, f0, f1, f2, f3, f4, f5, f6
FROM __rows SEMI JOIN (SELECT __id
  FROM __last
  WHERE len(__top) = 1 OR __top[2] < __ts) USING (__id) UNION ALL SELECT "user_id", __w.ts AS __ts, __w.v0 AS f0, __w.v1 AS f1, __w.v2 AS f2, __w.v3 AS f3, __w.v4 AS f4, CASE WHEN __w.z5 AND __w.v5 = 0 THEN CAST('-0.0' AS DOUBLE) ELSE __w.v5 END AS f5, __w.v6 AS f6
FROM (SELECT "user_id", max({'ts': __ts, 'k0': f0 IS NOT NULL, 'v0': f0, 'k1': f1 IS NOT NULL, 'v1': f1, 'k2': f2 IS NOT NULL, 'v2': f2, 'k3': f3 IS NOT NULL, 'v3': f3, 'k4': f4 IS NOT NULL, 'v4': f4, 'k5': f5 IS NOT NULL, 'v5': f5, 'k6': f6 IS NOT NULL, 'v6': f6, 'z5': signbit(f5)}) AS __w
  FROM __rows SEMI JOIN (SELECT "user_id"
    FROM __last
    WHERE len(__top) = 2 AND __top[2] = __ts) USING ("user_id")
  GROUP BY "user_id");
