-- Togai-style column aliases: no [sources.mapping] needed.
SELECT event_id    AS id,
       event_type  AS "schemaName",
       customer    AS "accountId",
       occurred_at AS "timestamp",
       loaded_at   AS "ingestedAt",
       gb          AS "attributes.gb",
       region      AS "dimensions.region"
FROM usage_events
WHERE occurred_at >= ${startTime} AND occurred_at < ${endTime}
ORDER BY occurred_at, event_id
