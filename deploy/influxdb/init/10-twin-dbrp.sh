#!/bin/bash
# Runs once, when the influxdb:2 container sets itself up (DOCKER_INFLUXDB_INIT_MODE=setup).
# The twin (and Grafana) query with InfluxQL over /query, which InfluxDB 2.x serves through a
# DBRP mapping from a database/retention-policy name to a bucket: map database "twin" to the bucket.
set -euo pipefail
influx v1 dbrp create \
  --bucket-id "${DOCKER_INFLUXDB_INIT_BUCKET_ID}" \
  --db twin \
  --rp autogen \
  --default \
  --org "${DOCKER_INFLUXDB_INIT_ORG}"
