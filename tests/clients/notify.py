"""CHANGE_NOTIFY and CANCEL through Umbra's SMB gateway with smbprotocol, signing required.

usage: notify.py PORT SHARE USER PASSWORD [PORT2]

The second connection (the one making the changes) goes to PORT2 when given: another node's
gateway, so the changes reach the watch across nodes.

1. A watch on a fresh directory (interim STATUS_PENDING first) completes when another
   connection creates a file in it: one record, ADDED, the file's name.
2. A WATCH_TREE watch reports another connection's delete-on-close of a file in a subdirectory
   as REMOVED with the path below the watched directory.
3. A watch the client cancels (CANCEL by AsyncId) ends with STATUS_CANCELLED, and the
   connection keeps working afterwards.
Prints OK on success; exits non-zero with the error otherwise.
"""
import sys
import time
import uuid

from smbprotocol.change_notify import ChangeNotifyFlags, CompletionFilter, FileAction, FileSystemWatcher
from smbprotocol.connection import Connection
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes, FilePipePrinterAccessMask,
                              ImpersonationLevel, Open, ShareAccess)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

WAIT_SECONDS = 20
SHARE_ALL = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE


def connect(port, share, user, password):
    conn = Connection(uuid.uuid4(), "127.0.0.1", port, require_signing=True)
    conn.connect()
    session = Session(conn, user, password, require_encryption=False)
    session.connect()
    tree = TreeConnect(session, r"\\127.0.0.1\%s" % share)
    tree.connect()
    return conn, tree


def open_dir(tree, path):
    d = Open(tree, path)
    d.create(ImpersonationLevel.Impersonation, FilePipePrinterAccessMask.GENERIC_READ,
             FileAttributes.FILE_ATTRIBUTE_DIRECTORY, SHARE_ALL, CreateDisposition.FILE_OPEN_IF,
             CreateOptions.FILE_DIRECTORY_FILE)
    return d


def create_file(tree, path, options=0):
    f = Open(tree, path)
    access = FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE | FilePipePrinterAccessMask.DELETE
    f.create(ImpersonationLevel.Impersonation, access, FileAttributes.FILE_ATTRIBUTE_NORMAL, SHARE_ALL,
             CreateDisposition.FILE_OPEN_IF, CreateOptions.FILE_NON_DIRECTORY_FILE | options)
    f.close()


def watch(d, completion_filter, flags=0, queued=False):
    """Starts a watch and returns once the server has answered STATUS_PENDING (an AsyncId), or
    with `queued` also once it answered at once with changes queued since the last watch."""
    w = FileSystemWatcher(d)
    w.start(completion_filter, flags=flags)
    deadline = time.time() + WAIT_SECONDS
    while w._request.async_id is None:
        if queued and w.response_event.is_set():
            return w
        assert not w.response_event.is_set(), "the watch completed at once instead of waiting"
        assert time.time() < deadline, "no interim response"
        time.sleep(0.02)
    return w


def finished(w):
    assert w.response_event.wait(WAIT_SECONDS), "the watch never completed"
    return w.result


def main(port, share, user, password, port2):
    conn1, tree1 = connect(port, share, user, password)
    conn2, tree2 = connect(port2, share, user, password)
    base = "notify-" + uuid.uuid4().hex[:8]
    d = open_dir(tree1, base)
    open_dir(tree2, base + "\\sub").close()

    # 1. Another connection creates a file.
    w = watch(d, CompletionFilter.FILE_NOTIFY_CHANGE_FILE_NAME)
    create_file(tree2, base + "\\new.txt")
    records = finished(w)
    got = [(r["action"].get_value(), r["file_name"].get_value()) for r in records]
    assert got == [(FileAction.FILE_ACTION_ADDED, "new.txt")], got

    # 2. WATCH_TREE: a delete-on-close below, by the other connection.
    create_file(tree2, base + "\\sub\\gone.txt")
    w = watch(d, CompletionFilter.FILE_NOTIFY_CHANGE_FILE_NAME, ChangeNotifyFlags.SMB2_WATCH_TREE)
    # The create above may still be queued on the watch; removal is what must arrive.
    got = []
    create_file(tree2, base + "\\sub\\gone.txt", CreateOptions.FILE_DELETE_ON_CLOSE)
    while (FileAction.FILE_ACTION_REMOVED, "sub\\gone.txt") not in got:
        got += [(r["action"].get_value(), r["file_name"].get_value()) for r in finished(w)]
        if (FileAction.FILE_ACTION_REMOVED, "sub\\gone.txt") not in got:
            w = watch(d, CompletionFilter.FILE_NOTIFY_CHANGE_FILE_NAME, ChangeNotifyFlags.SMB2_WATCH_TREE, queued=True)

    # 3. The client cancels a watch.
    w = watch(d, CompletionFilter.FILE_NOTIFY_CHANGE_FILE_NAME)
    w.cancel()
    assert w.response_event.wait(WAIT_SECONDS), "the cancelled watch never completed"
    assert getattr(w, "is_cancelled", False), "expected STATUS_CANCELLED, got %r" % (w._t_exc or w.result)
    # The connection still works.
    create_file(tree1, base + "\\after.txt")

    d.close()
    conn1.disconnect()
    conn2.disconnect()
    print("OK")


if __name__ == "__main__":
    port, share, user, password = sys.argv[1:5]
    port2 = sys.argv[5] if len(sys.argv) > 5 else port
    main(int(port), share, user, password, int(port2))
