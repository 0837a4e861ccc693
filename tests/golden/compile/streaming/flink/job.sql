-- The streaming job of views load_test, user_clicks, user_spend (`featurestore stream`).
-- Each featurestore_<view>_<output> is a Python function of streaming.job
-- that writes its updates to Redis through featurestore.layout.

SET 'pipeline.object-reuse' = 'true';
SET 'python.fn-execution.arrow.batch.size' = '20000';
SET 'python.fn-execution.bundle.size' = '100000';
SET 'python.fn-execution.bundle.time' = '50';
SET 'table.exec.mini-batch.allow-latency' = '400 ms';
SET 'table.exec.mini-batch.enabled' = 'true';
SET 'table.exec.mini-batch.size' = '1000000';
SET 'table.exec.state.ttl' = '1213200000 ms';
SET 'table.local-time-zone' = 'UTC';
SET 'table.optimizer.agg-phase-strategy' = 'TWO_PHASE';

CREATE TEMPORARY TABLE `clicks` (
  `user_id` STRING,
  `page` STRING,
  `ts` TIMESTAMP_LTZ(6)
) WITH (
  'connector' = 'kafka',
  'topic' = 'clicks',
  'properties.bootstrap.servers' = 'localhost:9092',
  'properties.group.id' = 'features',
  'scan.startup.mode' = 'earliest-offset',
  'format' = 'json',
  'json.timestamp-format.standard' = 'ISO-8601',
  'json.ignore-parse-errors' = 'true'
);

CREATE TEMPORARY TABLE `clicks__lines` (
  `line` BYTES
) WITH (
  'connector' = 'kafka',
  'topic' = 'clicks',
  'properties.bootstrap.servers' = 'localhost:9092',
  'properties.group.id' = 'features-lines',
  'scan.startup.mode' = 'earliest-offset',
  'format' = 'raw'
);

CREATE TEMPORARY VIEW `clicks__unread` AS
SELECT `__drop`, (`__now` - MOD(MOD(`__now`, 3600000000) + 3600000000, 3600000000)) AS `__hour` FROM (
SELECT CASE WHEN POSITION(U&'\FFFD' IN `__text`) > 0 AND ENCODE(`__text`, 'UTF-8') <> `line` THEN 'invalid_utf8' WHEN `__text` IS JSON OBJECT THEN CAST(NULL AS STRING) WHEN REGEXP_REPLACE(REGEXP_REPLACE(`__text`, '[\x00-\x08\x0B\x0C\x0E-\x1F]', 'x'), '^\x{FEFF}|[\t\r]', ' ') IS JSON OBJECT THEN CAST(NULL AS STRING) ELSE 'unparsable' END AS `__drop`, UNIX_TIMESTAMP() * 1000000 AS `__now`
FROM (SELECT `line`, DECODE(`line`, 'UTF-8') AS `__text` FROM `clicks__lines`))
WHERE `__drop` IS NOT NULL;

CREATE TEMPORARY TABLE `purchases` (
  `user_id` STRING,
  `item_id` STRING,
  `amount` STRING,
  `category` STRING,
  `event_time` TIMESTAMP_LTZ(6)
) WITH (
  'connector' = 'filesystem',
  'path' = 'data/purchases/',
  'source.monitor-interval' = '100 ms',
  'format' = 'json',
  'json.timestamp-format.standard' = 'ISO-8601',
  'json.ignore-parse-errors' = 'true'
);

CREATE TEMPORARY VIEW `purchases__typed` AS
SELECT `user_id`, `item_id`, `amount`, `category`, `event_time`, (`__text_item_id` IS NOT NULL AND `item_id` IS NULL) OR (`__text_amount` IS NOT NULL AND `amount` IS NULL) AS `__mistyped`
FROM (SELECT `user_id`, CASE WHEN REGEXP(NULLIF(`item_id`, ''), '^[+-]?[0-9]+$') THEN TRY_CAST(NULLIF(`item_id`, '') AS BIGINT) END AS `item_id`, NULLIF(`item_id`, '') AS `__text_item_id`, TRY_CAST(NULLIF(`amount`, '') AS DOUBLE) AS `amount`, NULLIF(`amount`, '') AS `__text_amount`, `category`, `event_time` FROM `purchases`);

CREATE TEMPORARY TABLE `purchases__lines` (
  `line` BYTES
) WITH (
  'connector' = 'filesystem',
  'path' = 'data/purchases/',
  'source.monitor-interval' = '100 ms',
  'format' = 'raw'
);

CREATE TEMPORARY VIEW `purchases__unread` AS
SELECT `__drop`, (`__now` - MOD(MOD(`__now`, 3600000000) + 3600000000, 3600000000)) AS `__hour` FROM (
SELECT CASE WHEN POSITION(U&'\FFFD' IN `__text`) > 0 AND ENCODE(`__text`, 'UTF-8') <> `line` THEN 'invalid_utf8' WHEN `__text` IS JSON OBJECT THEN CAST(NULL AS STRING) WHEN REGEXP_REPLACE(REGEXP_REPLACE(`__text`, '[\x00-\x08\x0B\x0C\x0E-\x1F]', 'x'), '^\x{FEFF}|[\t\r]', ' ') IS JSON OBJECT THEN CAST(NULL AS STRING) ELSE 'unparsable' END AS `__drop`, UNIX_TIMESTAMP() * 1000000 AS `__now`
FROM (SELECT `line`, DECODE(`line`, 'UTF-8') AS `__text` FROM `purchases__lines`))
WHERE `__drop` IS NOT NULL;

CREATE TEMPORARY TABLE `synthetic` (
  `user_id` STRING,
  `value` DOUBLE,
  `ts` TIMESTAMP_LTZ(6)
) WITH (
  'connector' = 'datagen',
  'rows-per-second' = '1000',
  'fields.user_id.length' = '4'
);

CREATE TEMPORARY VIEW `load_test__rows` AS
SELECT *, CASE WHEN `__ts` IS NULL OR `user_id` IS NULL THEN 'invalid' WHEN `__ts` > `__now` + 3600000000 THEN 'future' WHEN NOT (((`__ts` - MOD(MOD(`__ts`, 60000000) + 60000000, 60000000)) >= (`__now` - MOD(MOD(`__now`, 60000000) + 60000000, 60000000)) - 7200000000)) THEN 'late' END AS `__drop`
FROM (SELECT *, (EXTRACT(EPOCH FROM `ts`) * 1000000 + EXTRACT(MICROSECOND FROM `ts`)) AS `__ts`, UNIX_TIMESTAMP() * 1000000 AS `__now` FROM `synthetic`);

CREATE TEMPORARY VIEW `load_test__tiles` AS
SELECT `user_id`, `__tile`, MAX(`__ts`) AS `__newest`, SUM((`__i0_hi` - `__l0_hi`) / 4294967296) AS `__s0_sum_hi_h`, SUM(`__l0_hi`) AS `__s0_sum_hi_l`, SUM((`__i0_lo` - `__l0_lo`) / 4294967296) AS `__s0_sum_lo_h`, SUM(`__l0_lo`) AS `__s0_sum_lo_l`, COUNT(CASE WHEN ABS(`__x0`) >= 9.223372036854776E18 OR (POWER(`__x0`, 1E0) <> `__x0`) THEN 1 END) AS `__s0_count_out63`
FROM (SELECT *, MOD(MOD(`__i0_hi`, 4294967296) + 4294967296, 4294967296) AS `__l0_hi`, MOD(MOD(`__i0_lo`, 4294967296) + 4294967296, 4294967296) AS `__l0_lo` FROM (SELECT *, CASE WHEN ABS(`__x0`) < 9.223372036854776E18 THEN CAST(`__x0` AS BIGINT) END AS `__i0_hi`, CASE WHEN ABS(`__x0`) < 9.223372036854776E18 THEN CAST((`__x0` - CAST(CASE WHEN ABS(`__x0`) < 9.223372036854776E18 THEN CAST(`__x0` AS BIGINT) END AS DOUBLE)) * 4.611686018427388E18 AS BIGINT) END AS `__i0_lo` FROM (SELECT `user_id`, `__tile`, `__ts`, (CASE WHEN CAST(`value` AS DOUBLE) = 0 THEN 0E0 ELSE CAST(`value` AS DOUBLE) END) AS `__x0` FROM (SELECT *, (`__ts` - MOD(MOD(`__ts`, 60000000) + 60000000, 60000000)) AS `__tile` FROM `load_test__rows` WHERE `__drop` IS NULL AND (`__ts` - MOD(MOD(`__ts`, 60000000) + 60000000, 60000000)) >= (`__now` - MOD(MOD(`__now`, 60000000) + 60000000, 60000000)) - 7200000000))))
GROUP BY `user_id`, `__tile`;

CREATE TEMPORARY VIEW `load_test__dropped` AS
SELECT `__drop`, `__hour`, COUNT(*) AS `__count`, MAX(`__newest`) AS `__newest` FROM (
SELECT COALESCE(`__drop`, 'counted') AS `__drop`, (`__now` - MOD(MOD(`__now`, 3600000000) + 3600000000, 3600000000)) AS `__hour`, CASE WHEN `__drop` IS NULL AND `__ts` <= `__now` THEN `__ts` END AS `__newest` FROM `load_test__rows`)
GROUP BY `__drop`, `__hour`;

CREATE TEMPORARY VIEW `user_clicks__rows` AS
SELECT *, CASE WHEN `__ts` IS NULL OR `user_id` IS NULL THEN 'invalid' WHEN `__ts` > `__now` + 3600000000 THEN 'future' WHEN `__ts` < `__now` - 30000000 OR NOT (((`__ts` - MOD(MOD(`__ts`, 60000000) + 60000000, 60000000)) >= (`__now` - MOD(MOD(`__now`, 60000000) + 60000000, 60000000)) - 7200000000)) THEN 'late' END AS `__drop`
FROM (SELECT *, (EXTRACT(EPOCH FROM `ts`) * 1000000 + EXTRACT(MICROSECOND FROM `ts`)) AS `__ts`, UNIX_TIMESTAMP() * 1000000 AS `__now` FROM `clicks`);

CREATE TEMPORARY VIEW `user_clicks__tiles` AS
SELECT `user_id`, `__tile`, MAX(`__ts`) AS `__newest`, COUNT(*) AS `__sr_count_row`, COUNT(*) FILTER (WHERE `__w2`) AS `__srw2_count_row`
FROM (SELECT `user_id`, `__tile`, `__ts`, ((`page` = 'checkout')) IS TRUE AS `__w2` FROM (SELECT *, (`__ts` - MOD(MOD(`__ts`, 60000000) + 60000000, 60000000)) AS `__tile` FROM `user_clicks__rows` WHERE `__drop` IS NULL AND (`__ts` - MOD(MOD(`__ts`, 60000000) + 60000000, 60000000)) >= (`__now` - MOD(MOD(`__now`, 60000000) + 60000000, 60000000)) - 7200000000))
GROUP BY `user_id`, `__tile`;

CREATE TEMPORARY VIEW `user_clicks__dropped` AS
SELECT `__drop`, `__hour`, COUNT(*) AS `__count`, MAX(`__newest`) AS `__newest` FROM (
SELECT COALESCE(`__drop`, 'counted') AS `__drop`, (`__now` - MOD(MOD(`__now`, 3600000000) + 3600000000, 3600000000)) AS `__hour`, CASE WHEN `__drop` IS NULL AND `__ts` <= `__now` THEN `__ts` END AS `__newest` FROM `user_clicks__rows`
UNION ALL SELECT `__drop`, `__hour`, CAST(NULL AS BIGINT) FROM `clicks__unread`)
GROUP BY `__drop`, `__hour`;

CREATE TEMPORARY VIEW `user_spend__rows` AS
SELECT *, CASE WHEN `__ts` IS NULL OR `user_id` IS NULL OR `__mistyped` THEN 'invalid' WHEN `__ts` > `__now` + 3600000000 THEN 'future' WHEN `__ts` < `__now` - 600000000 OR NOT (((`__ts` - MOD(MOD(`__ts`, 300000000) + 300000000, 300000000)) >= (`__now` - MOD(MOD(`__now`, 300000000) + 300000000, 300000000)) - 608400000000) OR (`__ts` > `__now` - 1209600000000)) THEN 'late' END AS `__drop`
FROM (SELECT *, (EXTRACT(EPOCH FROM `event_time`) * 1000000 + EXTRACT(MICROSECOND FROM `event_time`)) AS `__ts`, UNIX_TIMESTAMP() * 1000000 AS `__now` FROM `purchases__typed` WHERE (((`amount` > CAST(0 AS BIGINT)) OR (POWER(`amount`, 1E0) <> `amount`))) IS TRUE OR `__mistyped`);

CREATE TEMPORARY VIEW `user_spend__tile_inputs` AS
SELECT *, MOD(MOD(`__i2_hi`, 4294967296) + 4294967296, 4294967296) AS `__l2_hi`, MOD(MOD(`__i2_lo`, 4294967296) + 4294967296, 4294967296) AS `__l2_lo` FROM (SELECT *, CASE WHEN ABS(`__x2`) < 9.223372036854776E18 THEN CAST(`__x2` AS BIGINT) END AS `__i2_hi`, CASE WHEN ABS(`__x2`) < 9.223372036854776E18 THEN CAST((`__x2` - CAST(CASE WHEN ABS(`__x2`) < 9.223372036854776E18 THEN CAST(`__x2` AS BIGINT) END AS DOUBLE)) * 4.611686018427388E18 AS BIGINT) END AS `__i2_lo` FROM (SELECT `user_id`, `__ts`, (CASE WHEN CAST(`amount` AS DOUBLE) = 0 THEN 0E0 ELSE CAST(`amount` AS DOUBLE) END) AS `__x2`, (((`amount` >= CAST(100 AS BIGINT)) OR (POWER(`amount`, 1E0) <> `amount`))) IS TRUE AS `__w5` FROM (SELECT * FROM `user_spend__rows` WHERE `__drop` IS NULL AND (`__ts` - MOD(MOD(`__ts`, 300000000) + 300000000, 300000000)) >= (`__now` - MOD(MOD(`__now`, 300000000) + 300000000, 300000000)) - 608400000000)));

CREATE TEMPORARY VIEW `user_spend__tiles` AS
SELECT `user_id`, `__size`, `__tile`, MAX(`__ts`) AS `__newest`, COUNT(*) AS `__sr_count_row`, SUM((`__i2_hi` - `__l2_hi`) / 4294967296) AS `__s2_sum_hi_h`, SUM(`__l2_hi`) AS `__s2_sum_hi_l`, SUM((`__i2_lo` - `__l2_lo`) / 4294967296) AS `__s2_sum_lo_h`, SUM(`__l2_lo`) AS `__s2_sum_lo_l`, COUNT(CASE WHEN ABS(`__x2`) >= 9.223372036854776E18 OR (POWER(`__x2`, 1E0) <> `__x2`) THEN 1 END) AS `__s2_count_out63`, COUNT(*) FILTER (WHERE `__w5`) AS `__srw5_count_row`, MAX(CASE WHEN NOT (POWER(`__x2`, 1E0) <> `__x2`) THEN `__x2` END) AS `__s2_max_value`, COUNT(CASE WHEN (POWER(`__x2`, 1E0) <> `__x2`) THEN 1 END) AS `__s2_max_value_nan`
FROM (SELECT *, CAST(300000000 AS BIGINT) AS `__size`, (`__ts` - MOD(MOD(`__ts`, 300000000) + 300000000, 300000000)) AS `__tile` FROM `user_spend__tile_inputs`
  UNION ALL SELECT *, CAST(3600000000 AS BIGINT) AS `__size`, (`__ts` - MOD(MOD(`__ts`, 3600000000) + 3600000000, 3600000000)) AS `__tile` FROM `user_spend__tile_inputs`
  UNION ALL SELECT *, CAST(86400000000 AS BIGINT) AS `__size`, (`__ts` - MOD(MOD(`__ts`, 86400000000) + 86400000000, 86400000000)) AS `__tile` FROM `user_spend__tile_inputs`)
GROUP BY `user_id`, `__size`, `__tile`;

CREATE TEMPORARY VIEW `user_spend__latest` AS
SELECT `user_id`, MAX(CAST(`__ts` + 4611686018427387904 AS STRING) || CASE WHEN `__f0` IS NULL THEN '0' ELSE '1' || REPLACE(`__f0`, CHR(0), CHR(0) || CHR(1)) || CHR(0) || CHR(0) END) AS `latest`
FROM (SELECT *, `category` AS `__f0` FROM (SELECT * FROM `user_spend__rows` WHERE `__drop` IS NULL AND `__ts` > `__now` - 1209600000000))
GROUP BY `user_id`;

CREATE TEMPORARY VIEW `user_spend__dropped` AS
SELECT `__drop`, `__hour`, COUNT(*) AS `__count`, MAX(`__newest`) AS `__newest` FROM (
SELECT COALESCE(`__drop`, 'counted') AS `__drop`, (`__now` - MOD(MOD(`__now`, 3600000000) + 3600000000, 3600000000)) AS `__hour`, CASE WHEN `__drop` IS NULL AND `__ts` <= `__now` THEN `__ts` END AS `__newest` FROM `user_spend__rows`
UNION ALL SELECT `__drop`, `__hour`, CAST(NULL AS BIGINT) FROM `purchases__unread`)
GROUP BY `__drop`, `__hour`;

CREATE TEMPORARY TABLE `featurestore_written` (`written` BIGINT) WITH ('connector' = 'blackhole');

INSERT INTO `featurestore_written`
SELECT featurestore_load_test_tiles(CAST(`user_id` AS STRING), CAST(`__tile` AS BIGINT), CAST(`__newest` AS BIGINT), COALESCE(CAST(`__s0_sum_hi_h` AS BIGINT), CAST(0 AS BIGINT)), `__s0_sum_hi_h` IS NULL, COALESCE(CAST(`__s0_sum_hi_l` AS BIGINT), CAST(0 AS BIGINT)), `__s0_sum_hi_l` IS NULL, COALESCE(CAST(`__s0_sum_lo_h` AS BIGINT), CAST(0 AS BIGINT)), `__s0_sum_lo_h` IS NULL, COALESCE(CAST(`__s0_sum_lo_l` AS BIGINT), CAST(0 AS BIGINT)), `__s0_sum_lo_l` IS NULL, CAST(`__s0_count_out63` AS BIGINT)) FROM `load_test__tiles`;

INSERT INTO `featurestore_written`
SELECT featurestore_load_test_dropped(CAST(`__drop` AS STRING), CAST(`__hour` AS BIGINT), CAST(`__count` AS BIGINT), COALESCE(CAST(`__newest` AS BIGINT), CAST(0 AS BIGINT)), `__newest` IS NULL) FROM `load_test__dropped`;

INSERT INTO `featurestore_written`
SELECT featurestore_user_clicks_tiles(CAST(`user_id` AS STRING), CAST(`__tile` AS BIGINT), CAST(`__newest` AS BIGINT), CAST(`__sr_count_row` AS BIGINT), CAST(`__srw2_count_row` AS BIGINT)) FROM `user_clicks__tiles`;

INSERT INTO `featurestore_written`
SELECT featurestore_user_clicks_dropped(CAST(`__drop` AS STRING), CAST(`__hour` AS BIGINT), CAST(`__count` AS BIGINT), COALESCE(CAST(`__newest` AS BIGINT), CAST(0 AS BIGINT)), `__newest` IS NULL) FROM `user_clicks__dropped`;

INSERT INTO `featurestore_written`
SELECT featurestore_user_spend_tiles(CAST(`user_id` AS STRING), CAST(`__size` AS BIGINT), CAST(`__tile` AS BIGINT), CAST(`__newest` AS BIGINT), CAST(`__sr_count_row` AS BIGINT), COALESCE(CAST(`__s2_sum_hi_h` AS BIGINT), CAST(0 AS BIGINT)), `__s2_sum_hi_h` IS NULL, COALESCE(CAST(`__s2_sum_hi_l` AS BIGINT), CAST(0 AS BIGINT)), `__s2_sum_hi_l` IS NULL, COALESCE(CAST(`__s2_sum_lo_h` AS BIGINT), CAST(0 AS BIGINT)), `__s2_sum_lo_h` IS NULL, COALESCE(CAST(`__s2_sum_lo_l` AS BIGINT), CAST(0 AS BIGINT)), `__s2_sum_lo_l` IS NULL, CAST(`__s2_count_out63` AS BIGINT), CAST(`__srw5_count_row` AS BIGINT), COALESCE(CAST(`__s2_max_value` AS DOUBLE), 0E0), `__s2_max_value` IS NULL, CAST(`__s2_max_value_nan` AS BIGINT)) FROM `user_spend__tiles`;

INSERT INTO `featurestore_written`
SELECT featurestore_user_spend_latest(CAST(`user_id` AS STRING), CAST(`latest` AS STRING)) FROM `user_spend__latest`;

INSERT INTO `featurestore_written`
SELECT featurestore_user_spend_dropped(CAST(`__drop` AS STRING), CAST(`__hour` AS BIGINT), CAST(`__count` AS BIGINT), COALESCE(CAST(`__newest` AS BIGINT), CAST(0 AS BIGINT)), `__newest` IS NULL) FROM `user_spend__dropped`;
