#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# System test: dpdk_virtio_user.sh with 2 queue pairs per port (vpmd `queues = 2`,
# virtio-user queues=2, testpmd --rxq=2 --txq=2): frames on both queues both ways,
# vpmd's per-queue counters equal testpmd's per-queue TX counters, and they add up.
exec env QUEUES=2 bash "$(dirname "${BASH_SOURCE[0]}")/dpdk_virtio_user.sh" "$@"
