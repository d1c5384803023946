"""The cAdvisor families kata-pulse emits, with HELP and TYPE exactly as kubelet serves them.

The texts are those of cAdvisor v0.52 (metrics/prometheus.go) as found in a real kubelet
/metrics/cadvisor response; tests/cadvisor compares every one with that capture.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from pulse.expo.text import header

COUNTER = "counter"
GAUGE = "gauge"

CPU_USAGE = "container_cpu_usage_seconds_total"
CPU_USER = "container_cpu_user_seconds_total"
CPU_SYSTEM = "container_cpu_system_seconds_total"

MEMORY_USAGE = "container_memory_usage_bytes"
MEMORY_WORKING_SET = "container_memory_working_set_bytes"
MEMORY_RSS = "container_memory_rss"
MEMORY_CACHE = "container_memory_cache"
MEMORY_SWAP = "container_memory_swap"
MEMORY_MAPPED_FILE = "container_memory_mapped_file"
MEMORY_ACTIVE_FILE = "container_memory_total_active_file_bytes"
MEMORY_INACTIVE_FILE = "container_memory_total_inactive_file_bytes"
MEMORY_FAILURES = "container_memory_failures_total"

NETWORK_RECEIVE_BYTES = "container_network_receive_bytes_total"
NETWORK_RECEIVE_PACKETS = "container_network_receive_packets_total"
NETWORK_RECEIVE_ERRORS = "container_network_receive_errors_total"
NETWORK_RECEIVE_DROPPED = "container_network_receive_packets_dropped_total"
NETWORK_TRANSMIT_BYTES = "container_network_transmit_bytes_total"
NETWORK_TRANSMIT_PACKETS = "container_network_transmit_packets_total"
NETWORK_TRANSMIT_ERRORS = "container_network_transmit_errors_total"
NETWORK_TRANSMIT_DROPPED = "container_network_transmit_packets_dropped_total"

FS_READS = "container_fs_reads_total"
FS_WRITES = "container_fs_writes_total"
FS_READ_BYTES = "container_fs_reads_bytes_total"
FS_WRITE_BYTES = "container_fs_writes_bytes_total"
FS_READ_SECONDS = "container_fs_read_seconds_total"
FS_WRITE_SECONDS = "container_fs_write_seconds_total"
FS_IO_TIME = "container_fs_io_time_seconds_total"
FS_IO_TIME_WEIGHTED = "container_fs_io_time_weighted_seconds_total"
FS_IO_CURRENT = "container_fs_io_current"
FS_READS_MERGED = "container_fs_reads_merged_total"
FS_WRITES_MERGED = "container_fs_writes_merged_total"
FS_SECTOR_READS = "container_fs_sector_reads_total"
FS_SECTOR_WRITES = "container_fs_sector_writes_total"

THREADS = "container_threads"

SPEC_MEMORY_LIMIT = "container_spec_memory_limit_bytes"
START_TIME = "container_start_time_seconds"
LAST_SEEN = "container_last_seen"

# name -> (HELP, TYPE)
FAMILIES: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        CPU_USAGE: ("Cumulative cpu time consumed in seconds.", COUNTER),
        CPU_USER: ("Cumulative user cpu time consumed in seconds.", COUNTER),
        CPU_SYSTEM: ("Cumulative system cpu time consumed in seconds.", COUNTER),
        MEMORY_USAGE: (
            "Current memory usage in bytes, including all memory regardless of when it was"
            " accessed",
            GAUGE,
        ),
        MEMORY_WORKING_SET: ("Current working set in bytes.", GAUGE),
        MEMORY_RSS: ("Size of RSS in bytes.", GAUGE),
        MEMORY_CACHE: ("Number of bytes of page cache memory.", GAUGE),
        MEMORY_SWAP: ("Container swap usage in bytes.", GAUGE),
        MEMORY_MAPPED_FILE: ("Size of memory mapped files in bytes.", GAUGE),
        MEMORY_ACTIVE_FILE: ("Current total active file in bytes.", GAUGE),
        MEMORY_INACTIVE_FILE: ("Current total inactive file in bytes.", GAUGE),
        MEMORY_FAILURES: ("Cumulative count of memory allocation failures.", COUNTER),
        NETWORK_RECEIVE_BYTES: ("Cumulative count of bytes received", COUNTER),
        NETWORK_RECEIVE_PACKETS: ("Cumulative count of packets received", COUNTER),
        NETWORK_RECEIVE_ERRORS: ("Cumulative count of errors encountered while receiving", COUNTER),
        NETWORK_RECEIVE_DROPPED: ("Cumulative count of packets dropped while receiving", COUNTER),
        NETWORK_TRANSMIT_BYTES: ("Cumulative count of bytes transmitted", COUNTER),
        NETWORK_TRANSMIT_PACKETS: ("Cumulative count of packets transmitted", COUNTER),
        NETWORK_TRANSMIT_ERRORS: (
            "Cumulative count of errors encountered while transmitting",
            COUNTER,
        ),
        NETWORK_TRANSMIT_DROPPED: (
            "Cumulative count of packets dropped while transmitting",
            COUNTER,
        ),
        FS_READS: ("Cumulative count of reads completed", COUNTER),
        FS_WRITES: ("Cumulative count of writes completed", COUNTER),
        FS_READ_BYTES: ("Cumulative count of bytes read", COUNTER),
        FS_WRITE_BYTES: ("Cumulative count of bytes written", COUNTER),
        FS_READ_SECONDS: ("Cumulative count of seconds spent reading", COUNTER),
        FS_WRITE_SECONDS: ("Cumulative count of seconds spent writing", COUNTER),
        FS_IO_TIME: ("Cumulative count of seconds spent doing I/Os", COUNTER),
        FS_IO_TIME_WEIGHTED: ("Cumulative weighted I/O time in seconds", COUNTER),
        FS_IO_CURRENT: ("Number of I/Os currently in progress", GAUGE),
        FS_READS_MERGED: ("Cumulative count of reads merged", COUNTER),
        FS_WRITES_MERGED: ("Cumulative count of writes merged", COUNTER),
        FS_SECTOR_READS: ("Cumulative count of sector reads completed", COUNTER),
        FS_SECTOR_WRITES: ("Cumulative count of sector writes completed", COUNTER),
        THREADS: ("Number of threads running inside the container", GAUGE),
        SPEC_MEMORY_LIMIT: ("Memory limit for the container.", GAUGE),
        START_TIME: ("Start time of the container since unix epoch in seconds.", GAUGE),
        LAST_SEEN: ("Last time a container was seen by the exporter", GAUGE),
    }
)

# cAdvisor writes these without a timestamp: they describe the container, not a measurement.
UNTIMESTAMPED = frozenset({SPEC_MEMORY_LIMIT, START_TIME})

HEADERS: Mapping[str, bytes] = MappingProxyType(
    {name: header(name, help_text, kind) for name, (help_text, kind) in FAMILIES.items()}
)
