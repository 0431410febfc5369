#!/bin/bash
# QEMU with a human-monitor socket added, for rip_sample.py:
#   UVM_QEMU=crates/uvm-bench/scripts/run_qemu.sh uvmctl run -- true
mon="${MON:-/tmp/uvm-rip.sock}"
rm -f "$mon"
exec "${QEMU:-qemu-system-x86_64}" "$@" -monitor "unix:$mon,server,nowait"
