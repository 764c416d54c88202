"""An impacket client driven line by line on stdin (share modes, dispositions, FSCTLs).

usage: driven.py PORT SHARE USER PASSWORD
Commands (one a line; one answer line each, "OK" or "ERR 0x........ NAME"):
  open HANDLE PATH ACCESS SHAREMODE DISPOSITION [OPTIONS]   numbers in hex or decimal
  write HANDLE TEXT          write TEXT at offset 0
  rename HANDLE NEWPATH      FileRenameInformation on the open
  delete HANDLE              FileDispositionInformation (delete on close) on the open
  close HANDLE
  pwrite HANDLE OFFSET BYTE COUNT   COUNT bytes of BYTE at OFFSET (1 MiB WRITEs)
  read HANDLE OFFSET LEN     answers "OK LENGTH NONZERO HEX": bytes read, how many are not
                             zero, and the first 64 in hex
  fsctl HANDLE CODE INPUTHEX MAXOUT   an IOCTL with SMB2_0_IOCTL_IS_FSCTL; answers "OK OUTPUTHEX"
  info HANDLE                answers "OK SIZE ALLOCATION ATTRIBUTES" (standard and basic
                             information)
  pending HANDLE             answers "OK 0" or "OK 1": FileStandardInformation.DeletePending
  times HANDLE               answers "OK WRITTEN CHANGED": LastWriteTime and ChangeTime
  settimes HANDLE WRITTEN CHANGED   FileBasicInformation with these two (decimal; 0 leaves a
                             time, -1 freezes it for this handle, -2 lets it move again)
  lock HANDLE OFFSET LENGTH FLAGS [OFFSET LENGTH FLAGS ...]   one LOCK with these elements
                             (a lock that waits answers when it is granted)
  getsd HANDLE INFO          QUERY_INFO of the security descriptor's parts INFO (AdditionalInformation);
                             answers "OK OWNER GROUP DACL": SIDs (or -) and the DACL's ACEs as
                             TYPE:FLAGS:MASK:SID joined by "," (or - for none, "null" for a NULL DACL)
  setsd HANDLE INFO OWNER GROUP DACL   SET_INFO of a descriptor with these (same forms as getsd)
  setsdhex HANDLE INFO HEX   SET_INFO of these bytes as the descriptor
  opensd HANDLE PATH ACCESS SHARE DISPOSITION OPTIONS OWNER GROUP DACL   CREATE with a SecD context
  tdis                       TREE_DISCONNECT (without closing the handles), then connect again
  logoff                     LOGOFF (without closing the handles); the client is done after it
  quit
The test kills the process (SIGKILL) to model a client whose connection just ends.
"""
import struct
import sys


def descriptor(owner, group, dacl):
    """A self-relative security descriptor: OWNER and GROUP SIDs ("-" for none) and a DACL of
    ACEs "type:flags:mask:sid" separated by commas ("-" for none)."""
    from impacket.ldap import ldaptypes
    sd = ldaptypes.SR_SECURITY_DESCRIPTOR()
    sd["Revision"], sd["Sbz1"], sd["Control"] = b"\x01", b"\x00", 0x8000
    for field, text in (("OwnerSid", owner), ("GroupSid", group)):
        if text == "-":
            sd[field] = b""
        else:
            sd[field] = ldaptypes.LDAP_SID()
            sd[field].fromCanonical(text)
    sd["Sacl"] = b""
    if dacl == "-":
        sd["Dacl"] = b""
    else:
        sd["Control"] |= 0x4
        acl = ldaptypes.ACL()
        acl["AclRevision"], acl["Sbz1"], acl["Sbz2"] = 2, 0, 0
        acl.aces = []
        for text in dacl.split(","):
            kind, flags, mask, sid = text.split(":")
            ace = ldaptypes.ACE()
            ace["AceType"], ace["AceFlags"] = int(kind), int(flags)
            body = ldaptypes.ACCESS_ALLOWED_ACE() if int(kind) == 0 else ldaptypes.ACCESS_DENIED_ACE()
            body["Mask"] = ldaptypes.ACCESS_MASK()
            body["Mask"]["Mask"] = int(mask, 0)
            body["Sid"] = ldaptypes.LDAP_SID()
            body["Sid"].fromCanonical(sid)
            ace["Ace"] = body
            acl.aces.append(ace)
        sd["Dacl"] = acl
    return sd.getData()


def main():
    from impacket import smb3, smb3structs as s3
    from impacket.smbconnection import SMBConnection, SessionError
    from impacket.nt_errors import ERROR_MESSAGES

    port, share, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    conn = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=port, preferredDialect=s3.SMB2_DIALECT_311)
    conn.login(user, password)
    tid = conn.connectTree(share)
    smb = conn.getSMBServer()
    handles = {}

    def answer(text):
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    answer("READY")
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cmd, args = words[0], words[1:]
        try:
            if cmd == "open":
                options = int(args[5], 0) if len(args) > 5 else 0x40  # FILE_NON_DIRECTORY_FILE
                handles[args[0]] = conn.createFile(tid, args[1], desiredAccess=int(args[2], 0), shareMode=int(args[3], 0),
                                                   creationOption=options, creationDisposition=int(args[4], 0))
            elif cmd == "write":
                conn.writeFile(tid, handles[args[0]], args[1].encode())
            elif cmd == "rename":
                req = s3.FILE_RENAME_INFORMATION_TYPE_2()
                req["ReplaceIfExists"] = 1
                req["RootDirectory"] = b"\x00" * 8
                req["FileName"] = args[1].encode("utf-16le")
                req["FileNameLength"] = len(req["FileName"])
                smb.setInfo(tid, handles[args[0]], req, infoType=s3.SMB2_0_INFO_FILE, fileInfoClass=s3.SMB2_FILE_RENAME_INFO)
            elif cmd in ("delete", "undelete"):
                smb.setInfo(tid, handles[args[0]], struct.pack("<B", int(cmd == "delete")), infoType=s3.SMB2_0_INFO_FILE,
                            fileInfoClass=s3.SMB2_FILE_DISPOSITION_INFO)
            elif cmd == "close":
                try:
                    conn.closeFile(tid, handles.pop(args[0]))
                except KeyError:
                    pass  # impacket's own table keeps one entry per name; the CLOSE was answered

            elif cmd == "pwrite":
                offset, byte, count = int(args[1], 0), int(args[2], 0), int(args[3], 0)
                done = 0
                while done < count:
                    n = min(count - done, 1 << 20)
                    smb.write(tid, handles[args[0]], bytes([byte]) * n, offset + done, n)
                    done += n
            elif cmd == "read":
                offset, length = int(args[1], 0), int(args[2], 0)
                data = b""
                while len(data) < length:
                    piece = smb.read(tid, handles[args[0]], offset + len(data), min(length - len(data), 1 << 20))
                    if not piece:
                        break
                    data += piece
                answer("OK %d %d %s" % (len(data), sum(1 for b in data if b), data[:64].hex() or "-"))
                continue
            elif cmd == "fsctl":
                out = smb.ioctl(tid, handles[args[0]], ctlCode=int(args[1], 0), flags=s3.SMB2_0_IOCTL_IS_FSCTL,
                                inputBlob=bytes.fromhex(args[2] if args[2] != "-" else ""), maxInputResponse=0, maxOutputResponse=int(args[3], 0))
                answer("OK %s" % (bytes(out).hex() or "-"))
                continue
            elif cmd == "info":
                std = smb.queryInfo(tid, handles[args[0]], infoType=s3.SMB2_0_INFO_FILE, fileInfoClass=s3.SMB2_FILE_STANDARD_INFO)
                basic = smb.queryInfo(tid, handles[args[0]], infoType=s3.SMB2_0_INFO_FILE, fileInfoClass=s3.SMB2_FILE_BASIC_INFO)
                allocation, size = struct.unpack_from("<qq", std, 0)
                attributes = struct.unpack_from("<I", basic, 32)[0]
                answer("OK %d %d 0x%x" % (size, allocation, attributes))
                continue
            elif cmd == "times":
                basic = smb.queryInfo(tid, handles[args[0]], infoType=s3.SMB2_0_INFO_FILE, fileInfoClass=s3.SMB2_FILE_BASIC_INFO)
                answer("OK %d %d" % struct.unpack_from("<QQ", basic, 16))
                continue
            elif cmd == "settimes":
                written, changed = int(args[1]), int(args[2])
                smb.setInfo(tid, handles[args[0]], struct.pack("<qqqqII", 0, 0, written, changed, 0, 0), infoType=s3.SMB2_0_INFO_FILE,
                            fileInfoClass=s3.SMB2_FILE_BASIC_INFO)
            elif cmd == "pending":
                std = smb.queryInfo(tid, handles[args[0]], infoType=s3.SMB2_0_INFO_FILE, fileInfoClass=s3.SMB2_FILE_STANDARD_INFO)
                answer("OK %d" % std[20])
                continue
            elif cmd == "lock":
                # impacket's own lock() joins the elements as text; this sends them as bytes.
                elements = b""
                for i in range(1, len(args), 3):
                    e = s3.SMB2_LOCK_ELEMENT()
                    e["Offset"], e["Length"], e["Flags"] = int(args[i], 0), int(args[i + 1], 0), int(args[i + 2], 0)
                    elements += e.getData()
                packet = smb.SMB_PACKET()
                packet["Command"] = s3.SMB2_LOCK
                packet["TreeID"] = tid
                body = s3.SMB2Lock()
                body["FileID"] = handles[args[0]]
                body["LockCount"] = (len(args) - 1) // 3
                body["Locks"] = elements
                packet["Data"] = body
                reply = smb.recvSMB(smb.sendSMB(packet))
                reply.isValidAnswer(0)  # STATUS_SUCCESS; raises SessionError otherwise
            elif cmd == "getsd":
                from impacket.ldap import ldaptypes
                raw = smb.queryInfo(tid, handles[args[0]], infoType=s3.SMB2_0_INFO_SECURITY, fileInfoClass=0,
                                    additionalInformation=int(args[1], 0))
                sd = ldaptypes.SR_SECURITY_DESCRIPTOR(data=raw)
                sid = lambda v: v.formatCanonical() if v else "-"
                if not sd["Control"] & 0x4:
                    dacl = "-"
                elif not sd["Dacl"]:
                    dacl = "null"
                else:
                    dacl = ",".join("%d:%d:0x%x:%s" % (a["AceType"], a["AceFlags"], a["Ace"]["Mask"]["Mask"], a["Ace"]["Sid"].formatCanonical())
                                    for a in sd["Dacl"].aces) or "empty"
                answer("OK %s %s %s" % (sid(sd["OwnerSid"]), sid(sd["GroupSid"]), dacl))
                continue
            elif cmd == "opensd":
                # opensd HANDLE PATH ACCESS SHARE DISPOSITION OPTIONS OWNER GROUP DACL: a CREATE
                # carrying a SecD context with the descriptor setsd would send.
                blob = descriptor(args[6], args[7], args[8])
                ctx = s3.SMB2CreateContext()
                ctx["Next"], ctx["NameOffset"], ctx["NameLength"], ctx["Reserved"] = 0, 16, 4, 0
                ctx["DataOffset"], ctx["DataLength"] = 24, len(blob)
                ctx["Buffer"] = b"SecD" + b"\x00" * 4 + blob
                handles[args[0]] = smb.create(tid, args[1], int(args[2], 0), int(args[3], 0), int(args[5], 0), int(args[4], 0), 0, createContexts=[ctx])
            elif cmd in ("setsd", "setsdhex"):
                if cmd == "setsdhex":
                    blob = bytes.fromhex(args[2])
                else:
                    blob = descriptor(args[2], args[3], args[4])
                smb.setInfo(tid, handles[args[0]], blob, infoType=s3.SMB2_0_INFO_SECURITY, fileInfoClass=0,
                            additionalInformation=int(args[1], 0))
            elif cmd == "tdis":
                conn.disconnectTree(tid)
                tid = conn.connectTree(share)
                handles.clear()
            elif cmd == "logoff":
                conn.logoff()
                answer("OK")
                return
            elif cmd == "quit":
                answer("OK")
                break
            else:
                answer("ERR 0x00000000 unknown command %s" % cmd)
                continue
            answer("OK")
        except (SessionError, smb3.SessionError) as e:
            code = (e.getErrorCode() if hasattr(e, "getErrorCode") else e.get_error_code()) & 0xFFFFFFFF
            answer("ERR 0x%08x %s" % (code, ERROR_MESSAGES.get(code, ("?",))[0]))
    conn.logoff()


if __name__ == "__main__":
    main()
