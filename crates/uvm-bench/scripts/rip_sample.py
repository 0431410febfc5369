#!/usr/bin/env python3
"""Statistical profile of a TCG guest's boot, from outside.

Samples the vCPU's RIP through QEMU's human monitor (`info registers`) in a
loop and prints, per 10 ms of host time, the most frequent kernel symbols
(the `System.map` beside the tuned vmlinux, or `nm -n` of an unstripped
vmlinux), plus user-space symbols when USYMS names a non-PIE agent
build (RUSTFLAGS="-C relocation-model=static"). Under TCG the RIP QEMU
reports is where the vCPU last left translated code, so treat a sample as
"this phase of the boot", not as an exact hot spot (guest/kernel/NOTES.md).

Usage, with a QEMU wrapper that adds the monitor socket (run_qemu.sh next to
this file) so that uvm's own command line is profiled:

    UVM_QEMU=crates/uvm-bench/scripts/run_qemu.sh uvmctl run -- true &
    DUR=0.8 crates/uvm-bench/scripts/rip_sample.py ~/.cache/uvm/kernel/<hash>/System.map

Environment: MON (monitor socket, default /tmp/uvm-rip.sock, the wrapper's),
DUR (seconds to sample, default 1.0), USYMS (user-space binary for symbols),
TOTALS=N (also print the N symbols with the most samples over the run).
"""
import bisect
import collections
import os
import re
import socket
import subprocess
import sys
import time


def symbols(path, prefix=""):
    """Text symbols of `path`: a System.map as is, any other file through nm."""
    if path.endswith("System.map"):
        with open(path) as f:
            out = f.read()
    else:
        out = subprocess.run(["nm", "-n", "-C", path], capture_output=True, text=True).stdout
    syms = []
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[1] in "tTwW":
            syms.append((int(parts[0], 16), prefix + parts[2][:60]))
    return syms


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    mon = os.environ.get("MON", "/tmp/uvm-rip.sock")
    duration = float(os.environ.get("DUR", "1.0"))
    user = os.environ.get("USYMS")
    deadline = time.time() + 30
    sock = socket.socket(socket.AF_UNIX)
    while True:
        try:
            sock.connect(mon)
            break
        except OSError:
            if time.time() > deadline:
                sys.exit(f"no monitor socket at {mon}")
            time.sleep(0.0005)
    t0 = time.time()

    def command(text):
        sock.sendall(text.encode() + b"\n")
        buf = b""
        while not buf.endswith(b"(qemu) "):
            data = sock.recv(65536)
            if not data:
                raise EOFError
            buf += data
        return buf.decode(errors="replace")

    command("")
    samples = []
    stop = time.time() + duration
    while time.time() < stop:
        try:
            out = command("info registers")
        except (EOFError, OSError):
            break
        m = re.search(r"RIP=([0-9a-f]+)", out)
        if m:
            samples.append((time.time() - t0, int(m.group(1), 16)))
    syms = symbols(sys.argv[1])
    if user:
        syms += symbols(user, "U:")
    syms.sort()
    addrs = [a for a, _ in syms]

    def name(a):
        if a < 0x100000:
            return "<firmware>"
        if a < 0xFFFFFFFF00000000 and not user:
            return "<user>"
        i = bisect.bisect_right(addrs, a) - 1
        return syms[i][1] if i >= 0 else "?"

    buckets = collections.defaultdict(collections.Counter)
    for t, a in samples:
        buckets[int(t * 100)][name(a)] += 1
    print(f"{len(samples)} samples over {duration} s")
    for k in sorted(buckets):
        top = buckets[k].most_common(3)
        if top[0][0] == "native_safe_halt" and top[0][1] == sum(buckets[k].values()):
            continue
        print(f"{k * 10:5d} ms  " + ", ".join(f"{n}:{c}" for n, c in top))
    top = int(os.environ.get("TOTALS", "0"))
    if top:
        totals = collections.Counter(name(a) for _, a in samples)
        print(f"top {top} over the whole run (share of samples):")
        for n, c in totals.most_common(top):
            print(f"  {100 * c / len(samples):5.1f} %  {n}")


if __name__ == "__main__":
    main()
