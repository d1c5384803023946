"""Network: per guest interface (lo left out at extraction), receive and transmit counters."""

from __future__ import annotations

from collections.abc import Mapping

from pulse.cadvisor import families as f

# cAdvisor family <- kata_guest_netdev_stat item
NETWORK_ITEMS: Mapping[str, str] = {
    f.NETWORK_RECEIVE_BYTES: "recv_bytes",
    f.NETWORK_RECEIVE_PACKETS: "recv_packets",
    f.NETWORK_RECEIVE_ERRORS: "recv_errs",
    f.NETWORK_RECEIVE_DROPPED: "recv_drop",
    f.NETWORK_TRANSMIT_BYTES: "sent_bytes",
    f.NETWORK_TRANSMIT_PACKETS: "sent_packets",
    f.NETWORK_TRANSMIT_ERRORS: "sent_errs",
    f.NETWORK_TRANSMIT_DROPPED: "sent_drop",
}


def interface_figures(
    netdev: Mapping[str, Mapping[str, float]],
) -> list[tuple[str, dict[str, float]]]:
    """[(interface, {cAdvisor family: value})], interfaces sorted."""
    return [
        (
            interface,
            {family: items[item] for family, item in NETWORK_ITEMS.items() if item in items},
        )
        for interface, items in sorted(netdev.items())
    ]


def total_bytes(netdev: Mapping[str, Mapping[str, float]]) -> tuple[float, float]:
    """(received, transmitted) bytes over every interface."""
    received = sum(items.get("recv_bytes", 0.0) for items in netdev.values())
    transmitted = sum(items.get("sent_bytes", 0.0) for items in netdev.values())
    return received, transmitted
