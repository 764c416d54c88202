"""Times one server-side copy of a file within a share (FSCTL_SRV_COPYCHUNK_WRITE, 16 MiB per
request in 1 MiB chunks, as Windows Explorer sends), with impacket, signing as the server asks.
Prints MB/s. (impacket is too slow for bulk READs and WRITEs to time a copy through the client:
bench/server-copy.sh times that with smbclient.)

usage: server_copy.py PORT SHARE USER PASSWORD SOURCE SIZE_MIB
"""
import struct
import sys
import time


def main():
    from impacket import smb3structs as s3
    from impacket.smbconnection import SMBConnection

    port, share, user, password, source, size_mib = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
    size = size_mib << 20
    conn = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=port, preferredDialect=s3.SMB2_DIALECT_311)
    conn.login(user, password)
    tid = conn.connectTree(share)
    smb = conn.getSMBServer()
    mib = 1 << 20
    src = conn.createFile(tid, source, desiredAccess=0x1 | 0x80, shareMode=7, creationOption=0x40, creationDisposition=1)

    # Server-side copy.
    dst = conn.createFile(tid, "copy-server.bin", desiredAccess=0x1 | 0x2 | 0x80, shareMode=7, creationOption=0x40, creationDisposition=5)
    t0 = time.monotonic()
    key = smb.ioctl(tid, src, ctlCode=0x00140078, flags=s3.SMB2_0_IOCTL_IS_FSCTL, inputBlob=b"", maxInputResponse=0, maxOutputResponse=32)[:24]
    for start in range(0, size, 16 * mib):
        chunks = [(off, off, min(mib, size - off)) for off in range(start, min(start + 16 * mib, size), mib)]
        blob = key + struct.pack("<II", len(chunks), 0) + b"".join(struct.pack("<QQII", a, b, n, 0) for a, b, n in chunks)
        out = smb.ioctl(tid, dst, ctlCode=0x001480F2, flags=s3.SMB2_0_IOCTL_IS_FSCTL, inputBlob=blob, maxInputResponse=0, maxOutputResponse=12)
        written = struct.unpack("<III", out[:12])
        assert written[0] == len(chunks) and written[2] == sum(c[2] for c in chunks), written
    t1 = time.monotonic()
    conn.closeFile(tid, dst)

    print("%.1f" % (size / 1e6 / (t1 - t0)))
    conn.logoff()


if __name__ == "__main__":
    main()
