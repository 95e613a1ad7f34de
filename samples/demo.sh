#!/usr/bin/env bash
# Fresh machine -> running container: install pybuild, make the busybox base image,
# build samples/hello (twice: the second build is fully cached), run it, save it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e .
samples/make-busybox.sh busybox:latest
pybuild -t hello:1.0 samples/hello
pybuild -t hello:1.0 samples/hello
pybuild images
pybuild save -o hello.tar hello:1.0
pybuild run hello:1.0
