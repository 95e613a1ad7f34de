#!/bin/sh
# Printed by `pybuild run hello:1.0`.
echo "$GREETING, $(id -un) in $(pwd)"
cat /app/app.txt
cat /app/data/build-info.txt
