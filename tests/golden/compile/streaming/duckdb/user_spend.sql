-- view user_spend: the queries `featurestore materialize` runs
-- parameters: $start_us, $end_us (epoch microseconds, UTC)

-- not computed by DuckDB: source purchases: stream files
