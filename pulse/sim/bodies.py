"""Realistic simulated Kata shim `/metrics` bodies, for the demo, the tests and the benchmark.

A `SimulatedGuest` is a small deterministic model of one sandbox's VM: `render(now)` depends only
on the constructor arguments and `now`, and every counter is a non-decreasing function of `now`
that grows the way the real one does (the guest CPU times of all CPUs together grow by exactly
vCPUs x elapsed seconds x units per second, so unit detection can be exercised on it).

Flavours reproduce what differs between shims (see the reference notes on Kata shim metrics):

- `go`: containerd-shim-kata-v2 from Kata 2.5 on, QEMU: guest CPU times in milliseconds, every
  value re-encoded by Go (e-notation above 1e6), agent families in random order (the shim
  walks a Go map), the shim's own registry sorted, with go_* and process_* collectors.
- `go-2.4`: the same shim from Kata 2.3.1-2.4: guest CPU times in raw USER_HZ ticks.
- `runtime-rs`: the Rust shim with Dragonball: plain decimals (Rust's f64 Display), agent text
  then shim text, no go_*/virtiofsd, Dragonball's four hypervisor families, proc_status in kB.
- `firecracker`: the Go shim with Firecracker: no virtiofsd, no pmem, kata_firecracker_* families.
- `no-guest`: a Go shim whose agent did not answer: only the shim's own families.
"""

from __future__ import annotations

import enum
import hashlib
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from pulse.expo.text import escape_help, escape_label_value, format_value


class Flavour(enum.StrEnum):
    GO = "go"
    GO_TICKS = "go-2.4"
    RUST = "runtime-rs"
    FIRECRACKER = "firecracker"
    NO_GUEST = "no-guest"


USER_HZ = 100
_GIB = 1024**3
_MIB = 1024**2

CPU_ITEMS = (
    "user",
    "nice",
    "system",
    "idle",
    "iowait",
    "irq",
    "softirq",
    "steal",
    "guest",
    "guest_nice",
)
_BUSY_ITEMS = ("user", "nice", "system", "iowait", "irq", "softirq", "steal")

MEMINFO_ITEMS = (
    "mem_total", "mem_free", "mem_available", "buffers", "cached", "swap_cached", "active",
    "inactive", "active_anon", "inactive_anon", "active_file", "inactive_file", "unevictable",
    "mlocked", "high_total", "high_free", "low_total", "low_free", "mmap_copy", "swap_total",
    "swap_free", "dirty", "writeback", "anon_pages", "mapped", "shmem", "slab", "s_reclaimable",
    "s_unreclaim", "kernel_stack", "page_tables", "quicklists", "nfs_unstable", "bounce",
    "writeback_tmp", "commit_limit", "committed_as", "vmalloc_total", "vmalloc_used",
    "vmalloc_chunk", "hardware_corrupted", "anon_hugepages", "shmem_hugepages",
    "shmem_pmd_mapped", "cma_total", "cma_free", "hugepages_total", "hugepages_free",
    "hugepages_rsvd", "hugepages_surp", "hugepagesize", "direct_map_4k", "direct_map_4M",
    "direct_map_2M", "direct_map_1G", "hugetlb", "per_cpu", "k_reclaimable",
)  # fmt: skip

DISKSTAT_ITEMS = (
    "reads", "merged", "sectors_read", "time_reading", "writes", "writes_merged",
    "sectors_written", "time_writing", "in_progress", "time_in_progress",
    "weighted_time_in_progress", "discards", "discards_merged", "sectors_discarded",
    "time_discarding", "flushes", "time_flushing",
)  # fmt: skip

NETDEV_ITEMS = (
    "recv_bytes", "recv_packets", "recv_errs", "recv_drop", "recv_fifo", "recv_frame",
    "recv_compressed", "recv_multicast", "sent_bytes", "sent_packets", "sent_errs", "sent_drop",
    "sent_fifo", "sent_colls", "sent_carrier", "sent_compressed",
)  # fmt: skip

# Keys of a 6.1 guest kernel's /proc/vmstat; the few the model drives are computed, the
# others are counters (or gauges) with a per-key rate.
VMSTAT_ITEMS = (
    "nr_free_pages", "nr_zone_inactive_anon", "nr_zone_active_anon", "nr_zone_inactive_file",
    "nr_zone_active_file", "nr_zone_unevictable", "nr_zone_write_pending", "nr_mlock",
    "nr_bounce", "nr_zspages", "nr_free_cma", "numa_hit", "numa_miss", "numa_foreign",
    "numa_interleave", "numa_local", "numa_other", "nr_inactive_anon", "nr_active_anon",
    "nr_inactive_file", "nr_active_file", "nr_unevictable", "nr_slab_reclaimable",
    "nr_slab_unreclaimable", "nr_isolated_anon", "nr_isolated_file", "workingset_nodes",
    "workingset_refault_anon", "workingset_refault_file", "workingset_activate_anon",
    "workingset_activate_file", "workingset_restore_anon", "workingset_restore_file",
    "workingset_nodereclaim", "nr_anon_pages", "nr_mapped", "nr_file_pages", "nr_dirty",
    "nr_writeback", "nr_writeback_temp", "nr_shmem", "nr_shmem_hugepages",
    "nr_shmem_pmdmapped", "nr_file_hugepages", "nr_file_pmdmapped", "nr_anon_transparent_hugepages",
    "nr_vmscan_write", "nr_vmscan_immediate_reclaim", "nr_dirtied", "nr_written",
    "nr_throttled_written", "nr_kernel_misc_reclaimable", "nr_foll_pin_acquired",
    "nr_foll_pin_released", "nr_kernel_stack", "nr_page_table_pages", "nr_sec_page_table_pages",
    "nr_swapcached", "nr_dirty_threshold", "nr_dirty_background_threshold", "pgpgin", "pgpgout",
    "pswpin", "pswpout", "pgalloc_dma", "pgalloc_dma32", "pgalloc_normal", "pgalloc_movable",
    "allocstall_dma", "allocstall_dma32", "allocstall_normal", "allocstall_movable",
    "pgskip_dma", "pgskip_dma32", "pgskip_normal", "pgskip_movable", "pgfree", "pgactivate",
    "pgdeactivate", "pglazyfree", "pgfault", "pgmajfault", "pglazyfreed", "pgrefill",
    "pgreuse", "pgsteal_kswapd", "pgsteal_direct", "pgsteal_khugepaged", "pgdemote_kswapd",
    "pgdemote_direct", "pgdemote_khugepaged", "pgscan_kswapd", "pgscan_direct",
    "pgscan_khugepaged", "pgscan_direct_throttle", "pgscan_anon", "pgscan_file",
    "pgsteal_anon", "pgsteal_file", "zone_reclaim_failed", "pginodesteal", "slabs_scanned",
    "kswapd_inodesteal", "kswapd_low_wmark_hit_quickly", "kswapd_high_wmark_hit_quickly",
    "pageoutrun", "pgrotated", "drop_pagecache", "drop_slab", "oom_kill", "numa_pte_updates",
    "numa_huge_pte_updates", "numa_hint_faults", "numa_hint_faults_local",
    "numa_pages_migrated", "pgmigrate_success", "pgmigrate_fail", "thp_migration_success",
    "thp_migration_fail", "thp_migration_split", "compact_migrate_scanned",
    "compact_free_scanned", "compact_isolated", "compact_stall", "compact_fail",
    "compact_success", "compact_daemon_wake", "compact_daemon_migrate_scanned",
    "compact_daemon_free_scanned", "htlb_buddy_alloc_success", "htlb_buddy_alloc_fail",
    "unevictable_pgs_culled", "unevictable_pgs_scanned", "unevictable_pgs_rescued",
    "unevictable_pgs_mlocked", "unevictable_pgs_munlocked", "unevictable_pgs_cleared",
    "unevictable_pgs_stranded", "thp_fault_alloc", "thp_fault_fallback",
    "thp_fault_fallback_charge", "thp_collapse_alloc", "thp_collapse_alloc_failed",
    "thp_file_alloc", "thp_file_fallback", "thp_file_fallback_charge", "thp_file_mapped",
    "thp_split_page", "thp_split_page_failed", "thp_deferred_split_page", "thp_split_pmd",
    "thp_scan_exceed_none_pte", "thp_scan_exceed_swap_pte", "thp_scan_exceed_share_pte",
    "thp_zero_page_alloc", "thp_zero_page_alloc_failed", "thp_swpout", "thp_swpout_fallback",
    "balloon_inflate", "balloon_deflate", "balloon_migrate", "swap_ra", "swap_ra_hit",
    "direct_map_level2_splits", "direct_map_level3_splits", "nr_unstable",
)  # fmt: skip

PROC_STATUS_ITEMS = (
    "vmpeak", "vmsize", "vmlck", "vmpin", "vmhwm", "vmrss", "rssanon", "rssfile", "rssshmem",
    "vmdata", "vmstk", "vmexe", "vmlib", "vmpte", "vmswap", "hugetlbpages",
    "voluntary_ctxt_switches", "nonvoluntary_ctxt_switches",
)  # fmt: skip
PROC_STAT_ITEMS = ("utime", "stime", "cutime", "cstime")
GO_IO_ITEMS = ("rchar", "wchar", "syscr", "syscw", "readbytes", "writebytes", "cancelledwritebytes")
RUST_IO_ITEMS = (
    "rchar", "wchar", "syscr", "syscw", "read_bytes", "write_bytes", "cancelled_write_bytes",
)  # fmt: skip

SHIM_RPCS = (
    "connect", "create", "delete", "exec", "kill", "pids", "shutdown", "start", "state", "stats",
    "update", "wait",
)  # fmt: skip
AGENT_RPCS = tuple(
    f"grpc.{name}Request"
    for name in (
        "Check", "CreateContainer", "CreateSandbox", "GetGuestDetails", "GetMetrics",
        "GetOOMEvent", "ListInterfaces", "ListRoutes", "OnlineCPUMem", "RemoveContainer",
        "SignalProcess", "StartContainer", "StatsContainer", "UpdateInterface", "UpdateRoutes",
        "WaitProcess",
    )
)  # fmt: skip
RPC_BUCKETS = tuple(2.0**i for i in range(10))  # ExponentialBuckets(1, 2, 10) in the shim

FIRECRACKER_FAMILIES = {
    "api_server": (
        "process_startup_time_us",
        "process_startup_time_cpu_us",
        "sync_response_fails",
        "sync_vmm_send_timeout_count",
    ),
    "block": (
        "activate_fails",
        "cfg_fails",
        "flush_count",
        "queue_event_count",
        "read_bytes",
        "read_count",
        "write_bytes",
        "write_count",
        "rate_limiter_throttled_events",
    ),
    "get_api_requests": ("instance_info_count", "machine_cfg_count"),
    "i8042": (
        "error_count",
        "missed_read_count",
        "missed_write_count",
        "read_count",
        "reset_count",
        "write_count",
    ),
    "latencies_us": (
        "full_create_snapshot",
        "diff_create_snapshot",
        "load_snapshot",
        "pause_vm",
        "resume_vm",
    ),
    "logger": ("missed_metrics_count", "metrics_fails", "missed_log_count", "log_fails"),
    "mmds": ("rx_accepted", "rx_accepted_err", "rx_bad_eth", "tx_bytes", "tx_count", "tx_errors"),
    "net": (
        "rx_bytes_count",
        "rx_packets_count",
        "rx_fails",
        "tx_bytes_count",
        "tx_packets_count",
        "tx_fails",
        "event_fails",
    ),
    "patch_api_requests": ("drive_count", "drive_fails", "machine_cfg_count"),
    "put_api_requests": (
        "actions_count",
        "actions_fails",
        "boot_source_count",
        "drive_count",
        "logger_count",
        "machine_cfg_count",
        "network_count",
        "vsock_count",
    ),
    "rtc": ("error_count", "missed_read_count", "missed_write_count"),
    "seccomp": ("num_faults",),
    "signals": ("sigbus", "sigsegv"),
    "uart": (
        "error_count",
        "flush_count",
        "missed_read_count",
        "missed_write_count",
        "read_count",
        "write_count",
    ),
    "vcpu": ("exit_io_in", "exit_io_out", "exit_mmio_read", "exit_mmio_write", "failures"),
    "vmm": ("device_events", "panic_count"),
    "vsock": (
        "activate_fails",
        "cfg_fails",
        "rx_queue_event_count",
        "tx_queue_event_count",
        "rx_bytes_count",
        "tx_bytes_count",
        "conns_added",
        "conns_killed",
    ),
}

Labels = tuple[tuple[str, str], ...]
Rows = list[tuple[Labels, float]]


@dataclass(frozen=True, slots=True)
class _Family:
    """One family as a shim registry would hold it before encoding."""

    name: str
    help: str
    type: str
    samples: list[tuple[str, Labels, float]]  # (sample name, labels, value)


def _family(
    name: str, help_text: str, rows: Iterable[tuple[Labels, float]], type_: str = "gauge"
) -> _Family:
    return _Family(name, help_text, type_, [(name, labels, value) for labels, value in rows])


def _items(values: dict[str, float]) -> Rows:
    return [((("item", key),), value) for key, value in values.items()]


def _stable_fraction(*parts: object) -> float:
    """A value in [0, 1) that depends only on `parts`: per-key rates that never change."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True, slots=True)
class GuestProfile:
    """The fixed characteristics of one simulated VM, all derived from its seed."""

    ncpu: int
    boot_time: float
    mem_total: int
    busy_rates: dict[str, float] = field(repr=False)  # CPU-seconds per second, all vCPUs
    cpu_weights: tuple[float, ...] = field(repr=False)
    period: float = 600.0  # seconds of one load wave
    phase: float = 0.0
    anon_base: float = 0.0
    cache_max: float = 0.0
    disk_read_rate: float = 0.0  # sectors per second on the container's disk
    disk_write_rate: float = 0.0
    net_rx_rate: float = 0.0  # bytes per second on eth0
    net_tx_rate: float = 0.0
    fault_rate: float = 0.0  # minor page faults per second


def profile_for(seed: int, boot_time: float | None) -> GuestProfile:
    rng = random.Random(seed)
    ncpu = rng.choice((1, 2, 2, 4, 4, 8))
    busy_share = rng.uniform(0.05, 0.4)  # of all vCPU time, on average
    split = {
        "user": 0.62,
        "nice": 0.02,
        "system": 0.24,
        "iowait": 0.04,
        "irq": 0.01,
        "softirq": 0.05,
        "steal": 0.02,
    }
    busy_rates = {item: ncpu * busy_share * share for item, share in split.items()}
    raw_weights = [rng.uniform(0.8, 1.2) for _ in range(ncpu)]
    weights = tuple(w / sum(raw_weights) for w in raw_weights)
    mem_total = rng.choice((1, 2, 2, 4)) * _GIB - rng.choice((56, 64, 72)) * _MIB
    return GuestProfile(
        ncpu=ncpu,
        boot_time=boot_time if boot_time is not None else 1_761_000_000.0 + rng.randrange(86_400),
        mem_total=mem_total,
        busy_rates=busy_rates,
        cpu_weights=weights,
        period=rng.uniform(300.0, 900.0),
        phase=rng.uniform(0.0, 2 * math.pi),
        anon_base=mem_total * rng.uniform(0.1, 0.35),
        cache_max=mem_total * rng.uniform(0.1, 0.3),
        disk_read_rate=rng.uniform(5.0, 400.0),
        disk_write_rate=rng.uniform(20.0, 800.0),
        net_rx_rate=rng.uniform(2e3, 2e6),
        net_tx_rate=rng.uniform(1e3, 1e6),
        fault_rate=rng.uniform(50.0, 3000.0),
    )


def _wave_integral(
    rate: float, elapsed: float, profile: GuestProfile, amplitude: float = 0.5
) -> float:
    """∫ rate·(1 + a·sin(ωt + φ)) dt from boot: a counter whose rate moves but never stops."""
    omega = 2 * math.pi / profile.period
    swing = (math.cos(profile.phase) - math.cos(omega * elapsed + profile.phase)) / omega
    return rate * (elapsed + amplitude * swing)


def _wave(elapsed: float, profile: GuestProfile, amplitude: float = 0.3) -> float:
    return 1.0 + amplitude * math.sin(2 * math.pi * elapsed / profile.period + profile.phase)


def _page_round(value: float) -> float:
    return float(int(value) // 4096 * 4096)


@dataclass(frozen=True, slots=True)
class SimulatedGuest:
    sandbox_id: str
    flavour: Flavour = Flavour.GO
    seed: int = 0
    boot_time: float | None = None  # unix seconds; derived from the seed when not given
    profile: GuestProfile = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "profile", profile_for(self.seed, self.boot_time))

    # --- guest model -----------------------------------------------------------------------

    def cpu_seconds(self, now: float) -> dict[str, list[float]]:
        """Seconds per CPU time item, per vCPU (index i is cpu="i")."""
        profile = self.profile
        elapsed = max(0.0, now - profile.boot_time)
        per_cpu: dict[str, list[float]] = {item: [] for item in CPU_ITEMS}
        for weight in profile.cpu_weights:
            busy = {
                item: _wave_integral(rate * weight, elapsed, profile)
                for item, rate in profile.busy_rates.items()
            }
            for item in _BUSY_ITEMS:
                per_cpu[item].append(busy[item])
            per_cpu["idle"].append(elapsed - sum(busy.values()))
            per_cpu["guest"].append(busy["user"] * 0.02)
            per_cpu["guest_nice"].append(0.0)
        return per_cpu

    def cpu_time_values(self, now: float, unit: str) -> dict[str, dict[str, float]]:
        """kata_guest_cpu_time as the shim reports it: {cpu label: {item: value}} in `unit`."""
        per_cpu = self.cpu_seconds(now)
        rows: dict[str, dict[str, float]] = {}
        for cpu in range(self.profile.ncpu):
            # The kernel counts in USER_HZ ticks; Kata 2.5+ multiplies them by 10 (ms).
            ticks = {item: float(math.floor(per_cpu[item][cpu] * USER_HZ)) for item in CPU_ITEMS}
            rows[str(cpu)] = {item: _ticks_to(unit, value) for item, value in ticks.items()}
        rows["total"] = {
            item: sum(rows[str(c)][item] for c in range(self.profile.ncpu)) for item in CPU_ITEMS
        }
        return rows

    def meminfo(self, now: float) -> dict[str, float]:
        profile = self.profile
        elapsed = max(0.0, now - profile.boot_time)
        total = float(profile.mem_total)
        anon = _page_round(profile.anon_base * _wave(elapsed, profile, 0.25))
        cached = _page_round(profile.cache_max * (1 - math.exp(-elapsed / 900.0)) + 48 * _MIB)
        buffers = _page_round(2 * _MIB + cached * 0.01)
        shmem = _page_round(cached * 0.05)
        s_reclaimable = _page_round(18 * _MIB + cached * 0.02)
        s_unreclaim = _page_round(22 * _MIB)
        kernel_stack = float(profile.ncpu * 16 * 4096 + 1_900_544)
        page_tables = _page_round(anon / 250)
        used_other = 5 * _MIB
        free = total - (
            anon
            + cached
            + buffers
            + s_reclaimable
            + s_unreclaim
            + kernel_stack
            + page_tables
            + used_other
        )
        file_pages = cached + buffers - shmem
        inactive_file = _page_round(file_pages * 0.55)
        active_file = file_pages - inactive_file
        inactive_anon = _page_round((anon + shmem) * 0.1)
        active_anon = anon + shmem - inactive_anon
        values = dict.fromkeys(MEMINFO_ITEMS, 0.0)
        values.update(
            mem_total=total,
            mem_free=free,
            mem_available=free + inactive_file + active_file * 0.5 + s_reclaimable,
            buffers=buffers,
            cached=cached,
            active=active_anon + active_file,
            inactive=inactive_anon + inactive_file,
            active_anon=active_anon,
            inactive_anon=inactive_anon,
            active_file=active_file,
            inactive_file=inactive_file,
            dirty=_page_round(64 * 1024 * _wave(elapsed, profile, 0.9)),
            anon_pages=anon,
            mapped=_page_round(cached * 0.35),
            shmem=shmem,
            slab=s_reclaimable + s_unreclaim,
            s_reclaimable=s_reclaimable,
            s_unreclaim=s_unreclaim,
            kernel_stack=kernel_stack,
            page_tables=page_tables,
            commit_limit=_page_round(total / 2),
            committed_as=_page_round(anon * 1.6),
            vmalloc_total=35184372087808.0,
            vmalloc_used=_page_round(12 * _MIB),
            hugepagesize=float(2 * _MIB),
            direct_map_4k=float(110 * _MIB),
            direct_map_2M=total + 64 * _MIB - 110 * _MIB,
            per_cpu=float(profile.ncpu * 262144),
            k_reclaimable=s_reclaimable,
        )
        return values

    def vm_stat(self, now: float) -> dict[str, float]:
        profile = self.profile
        elapsed = max(0.0, now - profile.boot_time)
        mem = self.meminfo(now)
        values: dict[str, float] = {}
        for key in VMSTAT_ITEMS:
            fraction = _stable_fraction(self.seed, key)
            if key.startswith("nr_") or fraction < 0.45:
                values[key] = 0.0 if fraction < 0.3 else float(int(fraction * 5000))
            else:
                values[key] = float(math.floor(_wave_integral(fraction * 20, elapsed, profile)))
        pages = {
            "nr_free_pages": mem["mem_free"], "nr_inactive_anon": mem["inactive_anon"],
            "nr_active_anon": mem["active_anon"], "nr_inactive_file": mem["inactive_file"],
            "nr_active_file": mem["active_file"], "nr_anon_pages": mem["anon_pages"],
            "nr_mapped": mem["mapped"], "nr_file_pages": mem["cached"] + mem["buffers"],
            "nr_shmem": mem["shmem"], "nr_slab_reclaimable": mem["s_reclaimable"],
            "nr_slab_unreclaimable": mem["s_unreclaim"], "nr_page_table_pages": mem["page_tables"],
        }  # fmt: skip
        values.update({key: float(int(value // 4096)) for key, value in pages.items()})
        values["pgfault"] = float(math.floor(_wave_integral(profile.fault_rate, elapsed, profile)))
        values["pgmajfault"] = float(
            math.floor(_wave_integral(profile.fault_rate / 400, elapsed, profile))
        )
        values["pgpgin"] = float(
            math.floor(_wave_integral(profile.disk_read_rate / 2, elapsed, profile))
        )
        values["pgpgout"] = float(
            math.floor(_wave_integral(profile.disk_write_rate / 2, elapsed, profile))
        )
        values["oom_kill"] = 0.0
        return values

    def disks(self) -> tuple[str, ...]:
        """Guest block devices as /proc/diskstats lists them."""
        ram = tuple(f"ram{i}" for i in range(16))
        loops = tuple(f"loop{i}" for i in range(8))
        if self.flavour is Flavour.FIRECRACKER:
            return (*ram, *loops, "vda", "vdb")
        if self.flavour is Flavour.RUST:
            return (*ram, *loops, "vda")
        return (*ram, *loops, "pmem0", "vda")

    def diskstat(self, now: float) -> dict[str, dict[str, float]]:
        profile = self.profile
        elapsed = max(0.0, now - profile.boot_time)
        active_disks = {"vda": 1.0, "vdb": 0.8, "pmem0": 0.05}
        rows: dict[str, dict[str, float]] = {}
        for disk in self.disks():
            share = active_disks.get(disk)
            if share is None:
                rows[disk] = dict.fromkeys(DISKSTAT_ITEMS, 0.0)
                continue
            sectors_read = math.floor(
                _wave_integral(profile.disk_read_rate * share, elapsed, profile)
            )
            sectors_written = math.floor(
                _wave_integral(profile.disk_write_rate * share, elapsed, profile)
            )
            reads = sectors_read // 24
            writes = sectors_written // 16
            time_reading = reads * 3 // 2
            time_writing = writes * 2
            rows[disk] = dict(
                reads=reads, merged=reads // 9, sectors_read=sectors_read,
                time_reading=time_reading, writes=writes, writes_merged=writes // 3,
                sectors_written=sectors_written, time_writing=time_writing,
                in_progress=float(int(_stable_fraction(self.seed, disk, int(now)) * 3)),
                time_in_progress=(time_reading + time_writing) * 0.8,
                weighted_time_in_progress=time_reading + time_writing + writes // 10,
                discards=0, discards_merged=0, sectors_discarded=0, time_discarding=0,
                flushes=writes // 20, time_flushing=writes // 40,
            )  # fmt: skip
            rows[disk] = {item: float(value) for item, value in rows[disk].items()}
        return rows

    def netdev(self, now: float) -> dict[str, dict[str, float]]:
        profile = self.profile
        elapsed = max(0.0, now - profile.boot_time)
        rx = math.floor(_wave_integral(profile.net_rx_rate, elapsed, profile))
        tx = math.floor(_wave_integral(profile.net_tx_rate, elapsed, profile))
        lo = math.floor(elapsed * 40)
        eth0 = dict.fromkeys(NETDEV_ITEMS, 0.0)
        eth0.update(
            recv_bytes=rx, recv_packets=rx // 900, recv_drop=rx // 9_000_000,
            recv_multicast=elapsed // 60, sent_bytes=tx, sent_packets=tx // 700,
            recv_errs=0.0, sent_errs=0.0, sent_drop=tx // 50_000_000,
        )  # fmt: skip
        loopback = dict.fromkeys(NETDEV_ITEMS, 0.0)
        loopback.update(recv_bytes=lo, recv_packets=lo // 60, sent_bytes=lo, sent_packets=lo // 60)
        return {
            "eth0": {k: float(v) for k, v in eth0.items()},
            "lo": {k: float(v) for k, v in loopback.items()},
        }

    def tasks(self, now: float) -> dict[str, float]:
        elapsed = max(0.0, now - self.profile.boot_time)
        return {
            "cur": float(1 + int(_stable_fraction(self.seed, int(now)) * 3)),
            "max": float(78 + self.profile.ncpu * 6 + int(4 * _wave(elapsed, self.profile))),
        }

    def load(self, now: float) -> dict[str, float]:
        busy = sum(self.profile.busy_rates.values())
        elapsed = max(0.0, now - self.profile.boot_time)
        return {
            "load1": round(busy * _wave(elapsed, self.profile, 0.5), 2),
            "load5": round(busy * _wave(elapsed - 120, self.profile, 0.3), 2),
            "load15": round(busy, 2),
        }

    # --- rendering -------------------------------------------------------------------------

    @property
    def cpu_unit(self) -> str:
        return "ticks" if self.flavour is Flavour.GO_TICKS else "ms"

    def guest_families(self, now: float) -> list[_Family]:
        cpu = self.cpu_time_values(now, self.cpu_unit)
        cpu_rows = [
            ((("cpu", c), ("item", item)), value)
            for c, items in cpu.items()
            for item, value in items.items()
        ]
        disk_rows = [
            ((("disk", d), ("item", i)), v)
            for d, items in self.diskstat(now).items()
            for i, v in items.items()
        ]
        net_rows = [
            ((("interface", n), ("item", i)), v)
            for n, items in self.netdev(now).items()
            for i, v in items.items()
        ]
        return [
            _family("kata_guest_cpu_time", "Guest CPU statistics.", cpu_rows),
            _family("kata_guest_diskstat", "Disks statistics in system.", disk_rows),
            _family("kata_guest_load", "Guest system load.", _items(self.load(now))),
            _family(
                "kata_guest_meminfo",
                "Statistics about memory usage in the system.",
                _items(self.meminfo(now)),
            ),
            _family("kata_guest_netdev_stat", "Guest net devices statistics.", net_rows),
            _family("kata_guest_tasks", "Guest system load.", _items(self.tasks(now))),
            _family(
                "kata_guest_vm_stat", "Guest virtual memory statistics.", _items(self.vm_stat(now))
            ),
        ]

    def agent_families(self, now: float) -> list[_Family]:
        elapsed = max(0.0, now - self.profile.boot_time)
        scrapes = float(int(elapsed // 30) + 1)
        return [
            _family(
                "kata_agent_io_stat",
                "Agent process IO statistics.",
                _items(_process_io(self.seed, "agent", elapsed, RUST_IO_ITEMS)),
            ),
            _family(
                "kata_agent_proc_stat",
                "Agent process statistics.",
                _items(_process_stat(self.seed, "agent", elapsed)),
            ),
            _family(
                "kata_agent_proc_status",
                "Agent process status.",
                _items(_process_status(self.seed, "agent", elapsed, 1.0)),
            ),
            _family("kata_agent_scrape_count", "Metrics scrape count", [((), scrapes)], "counter"),
            _family("kata_agent_threads", "Agent process threads", [((), 8.0 + self.profile.ncpu)]),
            _family(
                "kata_agent_total_rss",
                "Agent process total RSS size",
                [((), 9_760_768.0 + 4096 * (int(elapsed) % 37))],
            ),
            _family(
                "kata_agent_total_time",
                "Agent process total time",
                [((), round(elapsed * 0.0021, 2))],
            ),
            _family("kata_agent_total_vm", "Agent process total VM size", [((), 1_187_913_728.0)]),
        ]

    def shim_families(self, now: float) -> list[_Family]:
        """The shim's own registry (shim, hypervisor, virtiofsd, Go collectors)."""
        elapsed = max(0.0, now - self.profile.boot_time)
        rust = self.flavour is Flavour.RUST
        status_scale = 1.0 / 1024 if rust else 1.0  # the Rust shim reports kB
        io_items = RUST_IO_ITEMS if rust else GO_IO_ITEMS
        families = [
            _family(
                "kata_shim_fds",
                "Kata containerd shim v2 open FDs.",
                [((), 31.0 + self.profile.ncpu)],
            ),
            _family(
                "kata_shim_io_stat",
                "Kata containerd shim v2 process IO statistics.",
                _items(_process_io(self.seed, "shim", elapsed, io_items)),
            ),
            _family(
                "kata_shim_netdev",
                "Kata containerd shim v2 network devices statistics.",
                [
                    ((("interface", n), ("item", i)), v)
                    for n, items in self.netdev(now).items()
                    for i, v in items.items()
                ],
            ),
            _family(
                "kata_shim_pod_overhead_cpu",
                "Kata Pod overhead for CPU resources(percent).",
                [((), round(1.5 * _wave(elapsed, self.profile), 3))],
            ),
            _family(
                "kata_shim_pod_overhead_memory_in_bytes",
                "Kata Pod overhead for memory resources(bytes).",
                [((), 1.4139776e08)],
            ),
            _family(
                "kata_shim_proc_stat",
                "Kata containerd shim v2 process statistics.",
                _items(_process_stat(self.seed, "shim", elapsed)),
            ),
            _family(
                "kata_shim_proc_status",
                "Kata containerd shim v2 process status.",
                _items(_process_status(self.seed, "shim", elapsed, status_scale)),
            ),
            _family("kata_shim_threads", "Kata containerd shim v2 process threads.", [((), 14.0)]),
        ]
        if rust:
            families += _dragonball_families(self.profile.ncpu, elapsed)
            return families
        families += [
            _histogram(
                "kata_shim_rpc_durations_histogram_milliseconds",
                "RPC latency distributions.",
                "action",
                SHIM_RPCS,
                self.seed,
                elapsed,
            ),
            _histogram(
                "kata_shim_agent_rpc_durations_histogram_milliseconds",
                "RPC latency distributions.",
                "action",
                AGENT_RPCS,
                self.seed,
                elapsed,
            ),
            *_process_families("kata_hypervisor", "Hypervisor", self.seed, elapsed),
            _family(
                "kata_hypervisor_netdev",
                "Net devices statistics.",
                [
                    ((("interface", n), ("item", i)), v)
                    for n, items in {
                        **self.netdev(now),
                        "tap0_kata": self.netdev(now)["eth0"],
                    }.items()
                    for i, v in items.items()
                ],
            ),
            *_go_families(self.seed, elapsed),
            *_process_collector(self.seed, elapsed, self.profile.boot_time),
        ]
        if self.flavour is Flavour.FIRECRACKER:
            families += _firecracker_families(self.seed, elapsed)
        else:
            families += _process_families("kata_virtiofsd", "virtiofsd", self.seed, elapsed)
        return sorted(families, key=lambda family: family.name)

    def render(self, now: float) -> bytes:
        """The shim's whole /metrics body at unix time `now`."""
        if self.flavour is Flavour.RUST:
            agent = sorted(
                self.agent_families(now) + self.guest_families(now), key=lambda f: f.name
            )
            text = _encode(agent, _rust_float) + _encode(self.shim_families(now), _rust_float)
            return text.encode()
        shim_text = _encode(self.shim_families(now), format_value)
        if self.flavour is Flavour.NO_GUEST:
            return shim_text.encode()
        # The Go shim decodes the agent's text into a Go map and walks it: random family order.
        agent = self.agent_families(now) + self.guest_families(now)
        random.Random(f"{self.seed}:{now}").shuffle(agent)
        return (shim_text + _encode(agent, format_value)).encode()


def _ticks_to(unit: str, ticks: float) -> float:
    if unit == "ticks":
        return ticks
    if unit == "ms":
        return ticks * (1000 // USER_HZ)
    return ticks / USER_HZ


def _process_io(seed: int, who: str, elapsed: float, items: Sequence[str]) -> dict[str, float]:
    return {
        item: float(math.floor(elapsed * 200 * _stable_fraction(seed, who, item))) for item in items
    }


def _process_stat(seed: int, who: str, elapsed: float) -> dict[str, float]:
    return {
        "utime": float(math.floor(elapsed * 0.3 * _stable_fraction(seed, who, "u"))),
        "stime": float(math.floor(elapsed * 0.2 * _stable_fraction(seed, who, "s"))),
        "cutime": 0.0,
        "cstime": 0.0,
    }


def _process_status(seed: int, who: str, elapsed: float, scale: float) -> dict[str, float]:
    values = {}
    for item in PROC_STATUS_ITEMS:
        fraction = _stable_fraction(seed, who, item)
        if item.endswith("ctxt_switches"):
            values[item] = float(math.floor(elapsed * 3 * fraction))
        elif item in ("vmlck", "vmpin", "vmswap", "hugetlbpages"):
            values[item] = 0.0
        else:
            values[item] = float(math.floor(fraction * 200_000_000 * scale / 4096) * 4096)
    return values


def _process_families(prefix: str, who: str, seed: int, elapsed: float) -> list[_Family]:
    return [
        _family(f"{prefix}_fds", f"Open FDs for {who}.", [((), 64.0 + seed % 7)]),
        _family(
            f"{prefix}_io_stat",
            f"Process IO statistics for {who}.",
            _items(_process_io(seed, who, elapsed, GO_IO_ITEMS)),
        ),
        _family(
            f"{prefix}_proc_stat",
            f"Process statistics for {who}.",
            _items(_process_stat(seed, who, elapsed)),
        ),
        _family(
            f"{prefix}_proc_status",
            f"Process status for {who}.",
            _items(_process_status(seed, who, elapsed, 1.0)),
        ),
        _family(f"{prefix}_threads", f"Threads for {who}.", [((), 6.0 + seed % 5)]),
    ]


def _histogram(
    name: str, help_text: str, label: str, values: Sequence[str], seed: int, elapsed: float
) -> _Family:
    samples: list[tuple[str, Labels, float]] = []
    for value in sorted(values):
        fraction = _stable_fraction(seed, name, value)
        count = math.floor(elapsed / (5 + 600 * fraction)) + 1
        total_ms = 0.0
        cumulative = 0
        for i, bound in enumerate(RPC_BUCKETS):
            # Most calls are fast: a geometric share of the remaining calls per bucket.
            cumulative = count - math.floor(count * (0.35 + fraction * 0.3) ** (i + 1))
            samples.append(
                (f"{name}_bucket", ((label, value), ("le", format_value(bound))), float(cumulative))
            )
            total_ms += (cumulative - (samples[-2][2] if i else 0)) * bound * 0.7
        samples.append((f"{name}_bucket", ((label, value), ("le", "+Inf")), float(count)))
        total_ms += (count - cumulative) * 900
        samples.append((f"{name}_sum", ((label, value),), round(total_ms, 3)))
        samples.append((f"{name}_count", ((label, value),), float(count)))
    return _Family(name, help_text, "histogram", samples)


def _go_families(seed: int, elapsed: float) -> list[_Family]:
    heap = 6_000_000 + 40_000 * (int(elapsed) % 97)
    gc_count = math.floor(elapsed / 120) + 3
    quantiles = [
        ("0", 2.4e-05),
        ("0.25", 4.1e-05),
        ("0.5", 5.3e-05),
        ("0.75", 8.9e-05),
        ("1", 0.000412),
    ]
    gc = _Family(
        "go_gc_duration_seconds",
        "A summary of the pause duration of garbage collection cycles.",
        "summary",
        [("go_gc_duration_seconds", (("quantile", q),), v) for q, v in quantiles]
        + [
            ("go_gc_duration_seconds_sum", (), round(gc_count * 6.1e-05, 9)),
            ("go_gc_duration_seconds_count", (), float(gc_count)),
        ],
    )
    allocated = math.floor(elapsed * 52_000) + heap
    gauges = {
        "go_memstats_alloc_bytes": ("Number of bytes allocated and still in use.", heap),
        "go_memstats_buck_hash_sys_bytes": (
            "Number of bytes used by the profiling bucket hash table.",
            1_456_123,
        ),
        "go_memstats_gc_sys_bytes": (
            "Number of bytes used for garbage collection system metadata.",
            4_512_000,
        ),
        "go_memstats_heap_alloc_bytes": ("Number of heap bytes allocated and still in use.", heap),
        "go_memstats_heap_idle_bytes": ("Number of heap bytes waiting to be used.", 5_128_192),
        "go_memstats_heap_inuse_bytes": ("Number of heap bytes that are in use.", heap + 1_200_000),
        "go_memstats_heap_objects": ("Number of allocated objects.", heap // 190),
        "go_memstats_heap_released_bytes": ("Number of heap bytes released to OS.", 3_276_800),
        "go_memstats_heap_sys_bytes": ("Number of heap bytes obtained from system.", 15_892_480),
        "go_memstats_last_gc_time_seconds": (
            "Number of seconds since 1970 of last garbage collection.",
            1.7610e9 + elapsed - elapsed % 120 + 0.123456789,
        ),
        "go_memstats_mcache_inuse_bytes": ("Number of bytes in use by mcache structures.", 4_800),
        "go_memstats_mcache_sys_bytes": (
            "Number of bytes used for mcache structures obtained from system.",
            15_600,
        ),
        "go_memstats_mspan_inuse_bytes": ("Number of bytes in use by mspan structures.", 190_400),
        "go_memstats_mspan_sys_bytes": (
            "Number of bytes used for mspan structures obtained from system.",
            228_480,
        ),
        "go_memstats_next_gc_bytes": (
            "Number of heap bytes when next garbage collection will take place.",
            11_534_336,
        ),
        "go_memstats_other_sys_bytes": (
            "Number of bytes used for other system allocations.",
            1_020_877,
        ),
        "go_memstats_stack_inuse_bytes": (
            "Number of bytes in use by the stack allocator.",
            884_736,
        ),
        "go_memstats_stack_sys_bytes": (
            "Number of bytes obtained from system for stack allocator.",
            884_736,
        ),
        "go_memstats_sys_bytes": ("Number of bytes obtained from system.", 25_773_072),
        "go_goroutines": ("Number of goroutines that currently exist.", 42 + seed % 9),
        "go_threads": ("Number of OS threads created.", 14),
    }
    counters = {
        "go_memstats_alloc_bytes_total": (
            "Total number of bytes allocated, even if freed.",
            allocated,
        ),
        "go_memstats_frees_total": ("Total number of frees.", allocated // 210),
        "go_memstats_lookups_total": ("Total number of pointer lookups.", 0),
        "go_memstats_mallocs_total": ("Total number of mallocs.", allocated // 200),
    }
    families = [
        gc,
        _family(
            "go_info", "Information about the Go environment.", [((("version", "go1.21.13"),), 1.0)]
        ),
    ]
    families += [_family(n, h, [((), float(v))]) for n, (h, v) in gauges.items()]
    families += [_family(n, h, [((), float(v))], "counter") for n, (h, v) in counters.items()]
    return families


def _process_collector(seed: int, elapsed: float, boot_time: float) -> list[_Family]:
    return [
        _family(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            [((), round(elapsed * 0.004, 2))],
            "counter",
        ),
        _family("process_max_fds", "Maximum number of open file descriptors.", [((), 1_048_576.0)]),
        _family("process_open_fds", "Number of open file descriptors.", [((), 31.0 + seed % 4)]),
        _family(
            "process_resident_memory_bytes", "Resident memory size in bytes.", [((), 48_926_720.0)]
        ),
        _family(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            [((), round(boot_time - 1.37, 2))],
        ),
        _family(
            "process_virtual_memory_bytes", "Virtual memory size in bytes.", [((), 1_402_277_888.0)]
        ),
        _family(
            "process_virtual_memory_max_bytes",
            "Maximum amount of virtual memory available in bytes.",
            [((), 1.8446744073709552e19)],
        ),
    ]


def _firecracker_families(seed: int, elapsed: float) -> list[_Family]:
    families = []
    for group, items in FIRECRACKER_FAMILIES.items():
        rows = {
            item: float(math.floor(elapsed * 10 * _stable_fraction(seed, group, item)))
            if _stable_fraction(seed, group, item, 0) > 0.4 else 0.0
            for item in items
        }  # fmt: skip
        families.append(
            _family(f"kata_firecracker_{group}", f"Firecracker {group} metrics.", _items(rows))
        )
    return families


def _dragonball_families(ncpu: int, elapsed: float) -> list[_Family]:
    vcpu_rows = [
        ((("cpu_id", str(cpu)), ("item", item)), float(math.floor(elapsed * rate * (cpu + 1))))
        for cpu in range(ncpu)
        for item, rate in (
            ("exit_io_in", 3.0),
            ("exit_io_out", 5.0),
            ("exit_mmio_read", 11.0),
            ("exit_mmio_write", 7.0),
            ("failures", 0.0),
        )
    ]
    return [
        _family(
            "kata_hypervisor_scrape_count",
            "Metrics scrape count",
            [((), float(int(elapsed // 30) + 1))],
            "counter",
        ),
        _family(
            "kata_hypervisor_seccomp",
            "Hypervisor seccomp metrics.",
            [((("item", "num_faults"),), 0.0)],
        ),
        _family(
            "kata_hypervisor_signals",
            "Hypervisor signals metrics.",
            [((("item", "sigbus"),), 0.0), ((("item", "sigsegv"),), 0.0)],
        ),
        _family(
            "kata_hypervisor_vcpu",
            "Hypervisor metrics specific to VCPUs' mode of functioning.",
            vcpu_rows,
        ),
    ]


def _rust_float(value: float) -> str:
    """Rust's f64 Display as rust-prometheus writes it: never e-notation, no trailing .0."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer():
        return str(int(value))
    return format(Decimal(repr(value)), "f")


def _encode(families: Iterable[_Family], number: Callable[[float], str]) -> str:
    """Text format as both client libraries write it: samples sorted by label values."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        samples = family.samples
        if family.type not in ("histogram", "summary"):
            samples = sorted(samples, key=lambda sample: [v for _, v in sample[1]])
        for name, labels, value in samples:
            label_text = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels)
            lines.append(
                f"{name}{{{label_text}}} {number(value)}" if labels else f"{name} {number(value)}"
            )
    return "\n".join(lines) + "\n" if lines else ""
