-- view item_interest: the queries `featurestore materialize` runs
-- parameters: $start_us, $end_us (epoch microseconds, UTC)

-- tiles: one row per entity and tile, one state per aggregation
SELECT "user_id", "item_id", __tile, count(i0_row) AS s0_n
FROM (SELECT "user_id", "item_id", __tile, __ts, 1 AS i0_row
  FROM (SELECT *, (__ts - (((__ts % 86400000000) + 86400000000) % 86400000000)) AS __tile
    FROM (SELECT *, (CASE WHEN "seen_at" >= TIMESTAMP '1678-01-01' AND "seen_at" < TIMESTAMP '2262-01-01' THEN (((epoch_ns(CAST("seen_at" AS TIMESTAMP_NS)) - (((epoch_ns(CAST("seen_at" AS TIMESTAMP_NS)) % 1000) + 1000) % 1000))) // 1000) ELSE epoch_us(CAST("seen_at" AS TIMESTAMP)) END) AS __ts
      FROM (SELECT * REPLACE (CAST("user_id" AS VARCHAR) AS "user_id", CAST("item_id" AS BIGINT) AS "item_id")
        FROM (SELECT *, '' AS filename, row_number() OVER () AS file_row_number
          FROM (select user_id, item_id, seen_at from read_json('data/views/*.json')))))
    WHERE __ts <= $end_us AND __ts >= $start_us))
GROUP BY "user_id", "item_id", __tile;
