"""Median of tools/bench/net's runs (JSON lines on stdin) as README lines."""
import json
import os
import sys
import time

r = sorted((json.loads(line) for line in sys.stdin), key=lambda x: x["rx_gbit_s"])[1]
print(f"Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} cores), tools/bench/net: "
      f"{r['bytes'] >> 20} MiB of SMTP DATA in {r['packets']} frames of 1460-byte payloads, one core, median of 3.")
print()
print(f"- receive path (Ethernet/IPv4/TCP checks, reassembly with reordering, read, end-of-data scan): "
      f"**{r['rx_gbit_s']:.1f} Gbit/s** per core, {r['rx_cycles_per_packet']:.0f} cycles a packet "
      f"(goal: at least 10 Gbit/s per lcore)")
print(f"- the limit, copying the payload once: {r['copy_gbit_s']:.1f} Gbit/s, {r['copy_cycles_per_packet']:.0f} cycles "
      f"a packet; the receive path runs at **{r['ratio_to_copy']:.0%}** of it")
