"""CHANGE_NOTIFY across two shares over the same files, with smbprotocol, signing required.

usage: notify_shares.py PORT SHARE FOLDER PORT2 FOLDER_SHARE USER PASSWORD

SHARE serves a volume's root, FOLDER_SHARE the folder FOLDER of the same volume (PORT2 may be
another node's gateway).
1. A watch on FOLDER through SHARE completes when a file is created at FOLDER_SHARE's root.
2. A watch on FOLDER_SHARE's root completes when a file is created in FOLDER through SHARE.
Prints OK on success; exits non-zero with the error otherwise.
"""
import sys

from smbprotocol.change_notify import CompletionFilter, FileAction

from notify import connect, create_file, finished, open_dir, watch


def names(records):
    return [(r["action"].get_value(), r["file_name"].get_value()) for r in records]


def main(port, share, folder, port2, folder_share, user, password):
    conn1, tree1 = connect(port, share, user, password)
    d1 = open_dir(tree1, folder)
    conn2, tree2 = connect(port2, folder_share, user, password)
    d2 = open_dir(tree2, "")

    w = watch(d1, CompletionFilter.FILE_NOTIFY_CHANGE_FILE_NAME)
    create_file(tree2, "via-folder-share.txt")
    got = names(finished(w))
    assert got == [(FileAction.FILE_ACTION_ADDED, "via-folder-share.txt")], got

    w = watch(d2, CompletionFilter.FILE_NOTIFY_CHANGE_FILE_NAME)
    create_file(tree1, folder + "\\via-root-share.txt")
    got = names(finished(w))
    assert got == [(FileAction.FILE_ACTION_ADDED, "via-root-share.txt")], got

    d1.close()
    d2.close()
    conn1.disconnect()
    conn2.disconnect()
    print("OK")


if __name__ == "__main__":
    port, share, folder, port2, folder_share, user, password = sys.argv[1:8]
    main(int(port), share, folder, int(port2), folder_share, user, password)
