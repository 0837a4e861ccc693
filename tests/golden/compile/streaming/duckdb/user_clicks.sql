-- view user_clicks: the queries `featurestore materialize` runs
-- parameters: $start_us, $end_us (epoch microseconds, UTC)

-- not computed by DuckDB: source clicks: stream kafka
