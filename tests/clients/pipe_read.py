"""A named-pipe READ that waits, through Umbra's SMB gateway with smbprotocol, signing required.

usage: pipe_read.py PORT USER PASSWORD

1. On \\PIPE\\srvsvc with nothing to read, a READ gets an interim STATUS_PENDING; a WRITE of a
   DCE/RPC bind on the same connection then completes it with the bind_ack.
2. A second waiting READ that the client cancels ends with STATUS_CANCELLED; the pipe and the
   connection keep working.
Prints OK on success; exits non-zero with the error otherwise.
"""
import sys
import time
import uuid

from smbprotocol.connection import Connection
from smbprotocol.exceptions import Cancelled
from smbprotocol.open import (CreateDisposition, FileAttributes, FilePipePrinterAccessMask, ImpersonationLevel, Open,
                              ShareAccess)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

WAIT_SECONDS = 20
# smbclient's bind to srvsvc (the gateway's unit tests use the same bytes).
BIND = bytes.fromhex("05000b03100000004800000001000000b810b810000000000100000000000100c84f324b7016d30112785a47bf6ee1"
                     "8803000000045d888aeb1cc9119fe808002b10486002000000")


def waiting_read(pipe):
    """Sends a READ and returns its request once the server answered STATUS_PENDING."""
    msg, receive = pipe.read(0, 4280, send=False)
    request = pipe.connection.send(msg, pipe.tree_connect.session.session_id, pipe.tree_connect.tree_connect_id)
    deadline = time.time() + WAIT_SECONDS
    while request.async_id is None:
        assert time.time() < deadline, "no interim response to the READ"
        time.sleep(0.02)
    return request, receive


def main(port, user, password):
    conn = Connection(uuid.uuid4(), "127.0.0.1", port, require_signing=True)
    conn.connect()
    session = Session(conn, user, password, require_encryption=False)
    session.connect()
    tree = TreeConnect(session, r"\\127.0.0.1\IPC$")
    tree.connect()
    pipe = Open(tree, "srvsvc")
    pipe.create(ImpersonationLevel.Impersonation,
                FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE,
                FileAttributes.FILE_ATTRIBUTE_NORMAL, ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
                CreateDisposition.FILE_OPEN, 0)

    # 1. The READ waits for the bind's answer.
    request, receive = waiting_read(pipe)
    pipe.write(BIND, 0)
    data = receive(request)
    assert data[:3] == b"\x05\x00\x0c", "expected a bind_ack, got %r" % data[:16]

    # 2. A READ the client cancels.
    request, receive = waiting_read(pipe)
    request.cancel()
    try:
        receive(request)
        raise AssertionError("the cancelled READ should end with STATUS_CANCELLED")
    except Cancelled:
        pass
    pipe.close()
    tree.disconnect()
    session.disconnect()
    conn.disconnect()
    print("OK")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
