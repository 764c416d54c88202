"""Keeps writing 64 KiB blocks to w.bin on one share, one every INTERVAL_MS (a steady background
load for bench/fsrvp.sh: about 6 MB/s at 10 ms, so the two cores are not spent on Python).
usage: fsrvp_writer.py PORT USER PASSWORD SHARE STOP_FILE [INTERVAL_MS]   (prints the writes done)"""
import os
import sys
import time

import smbclient

port, user, password, share, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
interval = float(sys.argv[6]) / 1000 if len(sys.argv) > 6 else 0.01
smbclient.register_session("127.0.0.1", username=user, password=password, port=port)
block = os.urandom(64 * 1024)
n = 0
with smbclient.open_file(rf"\\127.0.0.1\{share}\w.bin", mode="wb", buffering=0, port=port) as f:
    while not os.path.exists(stop):
        f.seek((n % 256) * len(block))
        f.write(block)
        n += 1
        time.sleep(interval)
print(n, flush=True)
