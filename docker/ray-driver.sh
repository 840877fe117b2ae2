#!/bin/sh
# Run a command (`inflora run ...`) as a driver of the Ray cluster at RAY_ADDRESS.
#
# `ray.init(address="ray-head:6379")` attaches the driver to a raylet on its own
# machine: from a container that is not a Ray node it fails ("No node info found
# matching ..."), and Ray Client (`ray://`) would need ray[client], which the
# image does not install. So this container first joins the cluster as a node
# with no CPUs and no GPUs (no stage is ever scheduled here), then runs the
# command in its place. The node goes when the container stops.
#
# compose.yaml stops the runner with SIGINT, which `inflora run` handles by
# marking its MLflow runs KILLED; running the same command again resumes them.
set -eu
: "${RAY_ADDRESS:?RAY_ADDRESS must name the Ray head, e.g. ray-head:6379}"
# The object store stays below the container's shm_size (1gb in compose.yaml): Ray's
# default (30 % of RAM) would fall back to /tmp, with a warning.
ray start --address="$RAY_ADDRESS" --num-cpus=0 --num-gpus=0 --disable-usage-stats \
    --object-store-memory="${RAY_DRIVER_OBJECT_STORE_BYTES:-500000000}"
exec "$@"
