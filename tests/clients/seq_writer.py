"""Alternating, sequence-numbered writes to two shares (design.md 5's one-cut property).

Write k (k = 1, 2, ...) goes to seq.bin on share A when k is odd and on share B when k is even,
as a u64 at offset ((k - 1) // 2) * 8; each write is acknowledged before the next starts. So a
snapshot set taken at one cut holds exactly the numbers 1..m across the two files: a number
whose predecessor is missing from the other file means the cut was not consistent.

usage: seq_writer.py HOST PORT USER PASSWORD SHARE_A SHARE_B STOP_FILE
Runs until STOP_FILE exists, then prints the number of writes acknowledged.
"""
import os
import struct
import sys

import smbclient


def main():
    host, port, user, password, share_a, share_b, stop = sys.argv[1:8]
    port = int(port)
    smbclient.register_session(host, username=user, password=password, port=port)
    # Readers may look while it writes (smbprotocol's default shares nothing, and share modes
    # now hold across the cluster as on Windows).
    files = [smbclient.open_file(rf"\\{host}\{s}\seq.bin", mode="wb", buffering=0, share_access="r", port=port) for s in (share_a, share_b)]
    k = 0
    while not os.path.exists(stop):
        k += 1
        f = files[(k - 1) % 2]
        f.seek(((k - 1) // 2) * 8)
        f.write(struct.pack("<Q", k))
    for f in files:
        f.close()
    print(k, flush=True)


if __name__ == "__main__":
    main()
