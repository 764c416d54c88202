"""A file round trip through Umbra's SMB gateway with a Python client, signing required.

usage: roundtrip.py impacket|smbprotocol PORT SHARE USER PASSWORD DIALECT
DIALECT: 2.1, 3.0.2 or 3.1.1. Prints OK on success; exits non-zero with the error otherwise.
"""
import hashlib
import io
import os
import sys
import uuid


def with_impacket(port, share, user, password, dialect):
    from impacket.smbconnection import SMBConnection
    from impacket import smb3structs as s3
    # impacket cannot ask for 3.0.2 by itself; 3.0 stands in for the 3.0 family.
    dialects = {"2.1": s3.SMB2_DIALECT_21, "3.0.2": s3.SMB2_DIALECT_30, "3.1.1": s3.SMB2_DIALECT_311}
    conn = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=port, preferredDialect=dialects[dialect])
    conn.login(user, password)
    assert conn.isSigningRequired(), "the server requires signing"
    data = os.urandom(3 * 1024 * 1024 + 17)
    name = "imp-%s.bin" % uuid.uuid4().hex[:8]
    conn.createDirectory(share, "impdir-" + name)
    conn.putFile(share, "impdir-%s\\%s" % (name, name), io.BytesIO(data).read)
    names = [f.get_longname() for f in conn.listPath(share, "impdir-%s\\*" % name)]
    assert name in names, names
    out = io.BytesIO()
    conn.getFile(share, "impdir-%s\\%s" % (name, name), out.write)
    assert hashlib.sha256(out.getvalue()).digest() == hashlib.sha256(data).digest(), "content differs"
    conn.rename(share, "impdir-%s\\%s" % (name, name), "impdir-%s\\renamed.bin" % name)
    conn.deleteFile(share, "impdir-%s\\renamed.bin" % name)
    conn.deleteDirectory(share, "impdir-" + name)
    conn.logoff()


def with_smbprotocol(port, share, user, password, dialect):
    from smbprotocol.connection import Connection, Dialects
    from smbprotocol.session import Session
    from smbprotocol.tree import TreeConnect
    from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes,
                                  FilePipePrinterAccessMask, ImpersonationLevel, Open, ShareAccess)
    dialects = {"2.1": Dialects.SMB_2_1_0, "3.0.2": Dialects.SMB_3_0_2, "3.1.1": Dialects.SMB_3_1_1}
    conn = Connection(uuid.uuid4(), "127.0.0.1", port, require_signing=True)
    conn.connect(dialects[dialect])
    session = Session(conn, user, password, require_encryption=False)
    session.connect()
    tree = TreeConnect(session, r"\\127.0.0.1\%s" % share)
    tree.connect()
    name = "sp-%s.bin" % uuid.uuid4().hex[:8]
    access = (FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE
              | FilePipePrinterAccessMask.DELETE)
    data = os.urandom(2 * 1024 * 1024 + 5)
    f = Open(tree, name)
    f.create(ImpersonationLevel.Impersonation, access, FileAttributes.FILE_ATTRIBUTE_NORMAL,
             ShareAccess.FILE_SHARE_READ, CreateDisposition.FILE_OVERWRITE_IF, CreateOptions.FILE_NON_DIRECTORY_FILE)
    step = 1024 * 1024
    for at in range(0, len(data), step):
        f.write(data[at:at + step], at)
    back = b"".join(f.read(at, min(step, len(data) - at)) for at in range(0, len(data), step))
    assert back == data, "content differs"
    f.close()
    g = Open(tree, name)
    g.create(ImpersonationLevel.Impersonation, FilePipePrinterAccessMask.DELETE, FileAttributes.FILE_ATTRIBUTE_NORMAL,
             ShareAccess.FILE_SHARE_DELETE, CreateDisposition.FILE_OPEN,
             CreateOptions.FILE_NON_DIRECTORY_FILE | CreateOptions.FILE_DELETE_ON_CLOSE)
    g.close()
    missing = Open(tree, name)
    try:
        missing.create(ImpersonationLevel.Impersonation, FilePipePrinterAccessMask.GENERIC_READ,
                       FileAttributes.FILE_ATTRIBUTE_NORMAL, ShareAccess.FILE_SHARE_READ,
                       CreateDisposition.FILE_OPEN, CreateOptions.FILE_NON_DIRECTORY_FILE)
        raise AssertionError("the file should be gone after delete-on-close")
    except Exception as e:  # smbprotocol raises SMBOSError/SMBResponseException subclasses
        if "should be gone" in str(e):
            raise
    tree.disconnect()
    session.disconnect()
    conn.disconnect()


if __name__ == "__main__":
    client, port, share, user, password, dialect = sys.argv[1:7]
    {"impacket": with_impacket, "smbprotocol": with_smbprotocol}[client](int(port), share, user, password, dialect)
    print("OK")
