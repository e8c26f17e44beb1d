-- The newest hour the legacy flush has written: later hours are not compared.
SELECT max(hour) FROM {{hourly_table}}
