"""Compounded related requests through Umbra's SMB gateway with smbprotocol's smbclient module.

usage: compound.py PORT SHARE USER PASSWORD

smbclient.stat() sends one compound, every message after the first marked related: CREATE, five
QUERY_INFOs on the placeholder FileId (all ones) and CLOSE. It works on a file and a directory,
and on a missing name the CREATE's error fails the whole chain (ENOENT).
Prints OK on success; exits non-zero with the error otherwise.
"""
import errno
import stat as py_stat
import sys
import uuid

import smbclient


def main(port, share, user, password):
    smbclient.register_session("127.0.0.1", username=user, password=password, port=port, require_signing=True)
    base = r"\\127.0.0.1\%s\cmp-%s" % (share, uuid.uuid4().hex[:8])
    smbclient.mkdir(base, port=port)
    data = b"compound" * 1000
    with smbclient.open_file(base + r"\f.bin", mode="wb", port=port) as f:
        f.write(data)
    st = smbclient.stat(base + r"\f.bin", port=port)
    assert st.st_size == len(data) and py_stat.S_ISREG(st.st_mode), st
    st = smbclient.stat(base, port=port)
    assert py_stat.S_ISDIR(st.st_mode), st
    try:
        smbclient.stat(base + r"\missing.bin", port=port)
        raise AssertionError("stat of a missing file should fail")
    except OSError as e:  # smbprotocol's SMBOSError, errno ENOENT
        assert e.errno == errno.ENOENT, e
    smbclient.remove(base + r"\f.bin", port=port)
    smbclient.rmdir(base, port=port)
    smbclient.reset_connection_cache()
    print("OK")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
