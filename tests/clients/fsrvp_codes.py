"""FSRVP (MS-FSRVP) result codes on every operation's error paths, against a live server.

Drives a server over the SMB2 named pipe \\FssagentRpc with impacket, building each request stub
with hand-written NDR (docs: fsrvp.md section 3), and checks the DWORD result (or the DCE/RPC fault)
of each call.  Written against the reference Samba 4.17 server (fss: sequence timeout = 1).

usage:
  fsrvp_codes.py --host 127.0.0.1 --port P --user U --password W --share S [--share2 S2]
                 [--denied-user U2 --denied-password W2] [--timer-seconds N] [--server umbra|samba]
                 [--only SCENARIO ... | --skip SCENARIO ...]

Output: one line per check, `PASS name: got ...` or `FAIL name: expected ... got ...`, then
`fsrvp_codes: N passed, M failed`; exit status 1 if any check failed.

Every scenario cleans up what it created (abort, expose + delete mappings), so scenarios are
independent and the script can be re-run against the same server.  With a short sequence timer
(Samba: 1 s) the steps of a scenario run back to back on one connection.

Known differences between the servers (selected with --server):
  check                                   samba                          umbra
  ------------------------------------    -----------------------------  ------------------------------
  has_shadow_copy.* (IsPathShadowCopied)  always FSRVP_E_NOT_SUPPORTED   0, present=0 before a commit,
                                          (unimplemented in Samba)       present=1 after a committed set
                                                                         on the volume, 0 again after the
                                                                         set is deleted; unknown share =
                                                                         E_INVALIDARG
  add_rules.not_snapshot_capable,         share `share` of samba-ref.sh  skipped (no such share known)
  is_path_supported.not_snapshot_capable  = FSRVP_E_NOT_SUPPORTED
  --share2 (second volume)                not used                       used when given
Everything else expects the same code from both (Umbra follows Samba's column of fsrvp.md 4.3,
e.g. invalid SetContext = E_INVALIDARG, unknown set id = E_INVALIDARG, Abort of a Committed or
Exposed set = 0 and no-op, Exposed sets do not block StartShadowCopySet).
"""
import argparse
import struct
import sys
import time
import uuid

from impacket.dcerpc.v5 import transport
from impacket.smbconnection import SMBConnection
from impacket.uuid import uuidtup_to_bin

FSRVP_UUID = ("a8e0653c-2744-4389-a61d-7373df8b2292", "1.0")

# result codes (fsrvp.md 2.2)
OK = 0x00000000
BAD_STATE = 0x80042301
OBJECT_NOT_FOUND = 0x80042308
NOT_SUPPORTED = 0x8004230C
OBJECT_ALREADY_EXISTS = 0x8004230D
INVALID_XML_DOCUMENT = 0x80042311   # GetShareMapping on a set that is not exposed yet
SET_IN_PROGRESS = 0x80042316
E_ACCESSDENIED = 0x80070005
E_INVALIDARG = 0x80070057

# DCE/RPC fault statuses
FAULT_NAMES = {
    0x000006F7: "rpc_x_bad_stub_data",
    0x1C01000B: "nca_s_proto_error",
    0x1C010002: "nca_s_op_rng_error",
    0x1C010003: "nca_s_unknown_if",
    0x00000005: "access_denied",
    0x1C00001A: "nca_s_fault_remote_no_memory",
}
BAD_STUB_FAULTS = (0x000006F7, 0x1C01000B)
OP_RNG_ERROR = 0x1C010002

# contexts (fsrvp.md 2.1)
CTX_BACKUP = 0x0
CTX_FILE_SHARE_BACKUP = 0x10
CTX_NAS_ROLLBACK = 0x19
CTX_APP_ROLLBACK = 0x9
ATTR_AUTO_RECOVERY = 0x400000

# opnums
OP_GET_VERSION, OP_SET_CONTEXT, OP_START, OP_ADD, OP_COMMIT, OP_EXPOSE, OP_RECOVERY, OP_ABORT, \
    OP_IS_PATH_SUPPORTED, OP_IS_PATH_SHADOW_COPIED, OP_GET_MAPPING, OP_DELETE_MAPPING, OP_PREPARE = range(13)


# --------------------------------------------------------------------------------------------------
# NDR encoding (NDR20, little endian)

def guid(g):
    return g.bytes_le


def u32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def wstr(s, max_count=None, offset=0, actual=None):
    """Conformant varying UTF-16 string incl. the NUL, padded to 4 (a [ref][string] parameter)."""
    data = s.encode("utf-16-le") + b"\0\0"
    n = len(data) // 2
    out = struct.pack("<III", n if max_count is None else max_count, offset, n if actual is None else actual)
    out += data
    return out + b"\0" * (-len(out) % 4)


def st_get_version():
    return b""


def st_set_context(ctx):
    return u32(ctx)


def st_start(client_set=None):
    return guid(client_set or uuid.uuid4())


def st_add(set_id, share, client_copy=None):
    return guid(client_copy or uuid.uuid4()) + guid(set_id) + wstr(share)


def st_set_timeout(set_id, timeout):
    return guid(set_id) + u32(timeout)


def st_set(set_id):
    return guid(set_id)


def st_share(share):
    return wstr(share)


def st_get_mapping(copy_id, set_id, share, level=1):
    return guid(copy_id) + guid(set_id) + wstr(share) + u32(level)


def st_delete_mapping(set_id, copy_id, share):
    return guid(set_id) + guid(copy_id) + wstr(share)


# --------------------------------------------------------------------------------------------------
# NDR decoding

class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def align(self, n):
        self.pos += -self.pos % n

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError("reply too short (need %d bytes at %d of %d)" % (n, self.pos, len(self.data)))
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def u32(self):
        self.align(4)
        return struct.unpack("<I", self.take(4))[0]

    def u64(self):
        self.align(8)
        return struct.unpack("<Q", self.take(8))[0]

    def guid(self):
        self.align(4)
        return uuid.UUID(bytes_le=self.take(16))

    def wstr(self):
        self.align(4)
        max_count, offset, actual = struct.unpack("<III", self.take(12))
        if offset != 0 or actual > max_count:
            raise ValueError("bad string header %d/%d/%d" % (max_count, offset, actual))
        s = self.take(actual * 2).decode("utf-16-le")
        self.align(4)
        return s.rstrip("\0")


def parse_share_mapping(body):
    """GetShareMapping reply body (without the result): dict or None for a NULL/other level."""
    r = Reader(body)
    level = r.u32()
    if level != 1:
        return {"level": level}
    ref = r.u32()
    if ref == 0:
        return {"level": 1, "null": True}
    r.align(8)
    m = {"level": 1, "set": r.guid(), "copy": r.guid()}
    ref_unc, ref_name = r.u32(), r.u32()
    m["tstamp"] = r.u64()
    m["unc"] = r.wstr() if ref_unc else None
    m["name"] = r.wstr() if ref_name else None
    return m


# --------------------------------------------------------------------------------------------------
# transport

class Fault(Exception):
    def __init__(self, status):
        super().__init__("DCE/RPC fault 0x%08x (%s)" % (status, FAULT_NAMES.get(status, "?")))
        self.status = status


class Client:
    """One SMB session + one bound FSRVP pipe."""

    def __init__(self, args, user=None, password=None):
        self.args = args
        self.user = user or args.user
        self.password = password or args.password
        self.conn = SMBConnection(args.host, args.host, sess_port=args.port)
        self.conn.login(self.user, self.password)
        self.t = transport.SMBTransport(args.host, args.port, r"\FssagentRpc", smb_connection=self.conn)
        self.dce = self.t.get_dce_rpc()
        self.dce.connect()
        self.dce.bind(uuidtup_to_bin(FSRVP_UUID))
        self._buf = b""

    def close(self):
        for f in (self.dce.disconnect, self.conn.logoff, self.conn.close):
            try:
                f()
            except Exception:
                pass

    def _read_fragment(self):
        while len(self._buf) < 16 or len(self._buf) < struct.unpack("<H", self._buf[8:10])[0]:
            chunk = self.t.recv(forceRecv=1)
            if not chunk:
                raise ConnectionError("pipe closed")
            self._buf += chunk
        n = struct.unpack("<H", self._buf[8:10])[0]
        frag, self._buf = self._buf[:n], self._buf[n:]
        return frag

    def raw(self, opnum, stub):
        """Send one request; return the response stub, or raise Fault."""
        self._buf = b""
        self.dce.call(opnum, stub)
        stub_out = b""
        while True:
            frag = self._read_fragment()
            ptype, flags = frag[2], frag[3]
            frag_len, auth_len = struct.unpack("<HH", frag[8:12])
            if ptype == 3:
                raise Fault(struct.unpack("<I", frag[24:28])[0])
            if ptype != 2:
                raise ConnectionError("unexpected PDU type %d" % ptype)
            end = frag_len - (auth_len + 8 if auth_len else 0)
            stub_out += frag[24:end]
            if flags & 0x02:
                return stub_out

    def call(self, opnum, stub):
        """Return (result DWORD, reply body without the result)."""
        out = self.raw(opnum, stub)
        if len(out) < 4:
            raise ValueError("reply stub of %d bytes" % len(out))
        return struct.unpack("<I", out[-4:])[0], out[:-4]

    # convenience wrappers, each returning the result (and outs)
    def get_version(self):
        res, body = self.call(OP_GET_VERSION, st_get_version())
        r = Reader(body)
        return res, r.u32(), r.u32()

    def set_context(self, ctx):
        return self.call(OP_SET_CONTEXT, st_set_context(ctx))[0]

    def start(self):
        res, body = self.call(OP_START, st_start())
        return res, Reader(body).guid()

    def add(self, set_id, share):
        res, body = self.call(OP_ADD, st_add(set_id, share))
        return res, Reader(body).guid()

    def prepare(self, set_id, timeout=240000):
        return self.call(OP_PREPARE, st_set_timeout(set_id, timeout))[0]

    def commit(self, set_id, timeout=180000):
        return self.call(OP_COMMIT, st_set_timeout(set_id, timeout))[0]

    def expose(self, set_id, timeout=120000):
        return self.call(OP_EXPOSE, st_set_timeout(set_id, timeout))[0]

    def recovery_complete(self, set_id):
        return self.call(OP_RECOVERY, st_set(set_id))[0]

    def abort(self, set_id):
        return self.call(OP_ABORT, st_set(set_id))[0]

    def is_path_supported(self, share):
        res, body = self.call(OP_IS_PATH_SUPPORTED, st_share(share))
        r = Reader(body)
        supported = r.u32()
        owner = r.wstr() if r.u32() else None
        return res, supported, owner

    def is_path_shadow_copied(self, share):
        res, body = self.call(OP_IS_PATH_SHADOW_COPIED, st_share(share))
        r = Reader(body)
        return res, r.u32(), r.u32()

    def get_mapping(self, copy_id, set_id, share, level=1):
        res, body = self.call(OP_GET_MAPPING, st_get_mapping(copy_id, set_id, share, level))
        return res, body

    def delete_mapping(self, set_id, copy_id, share):
        return self.call(OP_DELETE_MAPPING, st_delete_mapping(set_id, copy_id, share))[0]


# --------------------------------------------------------------------------------------------------
# checks

def fmt(v):
    if isinstance(v, Fault):
        return "fault 0x%08x (%s)" % (v.status, FAULT_NAMES.get(v.status, "?"))
    if isinstance(v, int):
        return "0x%08x" % v
    return str(v)


class Runner:
    def __init__(self, args):
        self.args = args
        self.passed = 0
        self.failed = 0
        self.samba = args.server == "samba"
        self.host = args.host.upper()
        self._client = None

    # output
    def ok(self, name, got):
        self.passed += 1
        print("PASS %s: got %s" % (name, fmt(got)), flush=True)

    def bad(self, name, expected, got):
        self.failed += 1
        print("FAIL %s: expected %s got %s" % (name, expected, fmt(got)), flush=True)

    def expect(self, name, expected, got):
        """expected: an int, or a tuple of acceptable ints/faults. got: int result or Fault."""
        accept = expected if isinstance(expected, tuple) else (expected,)
        if isinstance(got, Fault):
            good = got.status in [a.status for a in accept if isinstance(a, Fault)]
        else:
            good = got in [a for a in accept if isinstance(a, int)]
        if good:
            self.ok(name, got)
        else:
            self.bad(name, " or ".join(fmt(a) for a in accept), got)
        return good

    def truth(self, name, cond, got, expected_text):
        if cond:
            self.ok(name, got)
        else:
            self.bad(name, expected_text, got)
        return cond

    # connections
    @property
    def c(self):
        if self._client is None:
            self._client = Client(self.args)
        return self._client

    def drop_client(self):
        if self._client is not None:
            self._client.close()
            self._client = None

    def unc(self, share, trailing=True):
        return "\\\\%s\\%s%s" % (self.host, share, "\\" if trailing else "")

    def shares(self):
        return [self.args.share] + ([self.args.share2] if self.args.share2 else [])

    def cleanup(self, set_id, copies=()):
        """Remove a set whatever its state: abort (Started/Added), expose (Committed), delete mappings."""
        c = self.c
        for step in (lambda: c.abort(set_id), lambda: c.expose(set_id)):
            try:
                step()
            except Exception:
                pass
        for copy_id, share in copies:
            try:
                c.delete_mapping(set_id, copy_id, share)
            except Exception:
                pass

    def sleep_timer(self):
        time.sleep(self.args.timer_seconds + 0.5)

    # ----------------------------------------------------------------------------------------------
    # scenarios

    def sc_version(self):
        res, lo, hi = self.c.get_version()
        self.expect("version.result", OK, res)
        self.truth("version.min_max", (lo, hi) == (1, 1), "%d/%d" % (lo, hi), "1/1")

    def sc_context(self):
        for ctx in (CTX_BACKUP, CTX_FILE_SHARE_BACKUP, CTX_NAS_ROLLBACK, CTX_APP_ROLLBACK,
                    CTX_APP_ROLLBACK | ATTR_AUTO_RECOVERY, CTX_BACKUP | ATTR_AUTO_RECOVERY):
            self.expect("context.valid_0x%x" % ctx, OK, self.c.set_context(ctx))
        for ctx in (0x7, 0x2, 0x1):
            self.expect("context.invalid_0x%x" % ctx, E_INVALIDARG, self.c.set_context(ctx))

    def sc_start_without_context(self):
        if self.args.timer_seconds is None:
            print("SKIP start_without_context: needs --timer-seconds", flush=True)
            return
        self.sleep_timer()   # lets the sequence timer clear any context left over
        res, set_id = self.c.start()
        self.expect("start_without_context.start", BAD_STATE, res)
        if res == OK:
            self.cleanup(set_id)

    def sc_unknown_ids(self):
        c, s, cp = self.c, uuid.uuid4(), uuid.uuid4()
        share = self.unc(self.args.share)
        self.expect("unknown_ids.add", E_INVALIDARG, c.add(s, share)[0])
        self.expect("unknown_ids.prepare", E_INVALIDARG, c.prepare(s))
        self.expect("unknown_ids.commit", E_INVALIDARG, c.commit(s))
        self.expect("unknown_ids.expose", E_INVALIDARG, c.expose(s))
        self.expect("unknown_ids.recovery_complete", E_INVALIDARG, c.recovery_complete(s))
        self.expect("unknown_ids.abort", E_INVALIDARG, c.abort(s))
        self.expect("unknown_ids.get_mapping", E_INVALIDARG, c.get_mapping(cp, s, share)[0])
        self.expect("unknown_ids.delete_mapping", OBJECT_NOT_FOUND, c.delete_mapping(s, cp, share))

    def sc_add_rules(self):
        c, share = self.c, self.args.share
        copies = []
        self.expect("add_rules.set_context", OK, c.set_context(CTX_BACKUP))
        res, s = c.start()
        if not self.expect("add_rules.start", OK, res):
            return
        try:
            res, _ = c.add(s, self.unc("no_such_share_fsrvp"))
            self.expect("add_rules.unknown_share", E_INVALIDARG, res)
            res, _ = c.add(s, share)
            self.expect("add_rules.bad_unc", E_INVALIDARG, res)
            if self.samba:
                res, _ = c.add(s, self.unc("share"))
                self.expect("add_rules.not_snapshot_capable", NOT_SUPPORTED, res)
            res, cp = c.add(s, self.unc(share))
            self.expect("add_rules.add", OK, res)
            copies.append((cp, self.unc(share)))
            self.truth("add_rules.copy_id_nonzero", cp.int != 0, cp, "a non-zero copy id")
            res, _ = c.add(s, self.unc(share))
            self.expect("add_rules.same_share_twice", OBJECT_ALREADY_EXISTS, res)
            res, _ = c.add(s, self.unc(share.swapcase(), trailing=False))
            self.expect("add_rules.same_share_other_case_no_backslash", OBJECT_ALREADY_EXISTS, res)
            if self.args.share2:
                res, _ = c.add(s, self.unc(self.args.share2))
                self.expect("add_rules.add_share2", OK, res)
            self.expect("add_rules.abort", OK, c.abort(s))
        finally:
            self.cleanup(s, copies)

    def sc_wrong_states(self):
        c, share = self.c, self.unc(self.args.share)
        copies = []
        self.expect("wrong_states.set_context", OK, c.set_context(CTX_BACKUP))
        res, s = c.start()
        if not self.expect("wrong_states.start", OK, res):
            return
        try:
            self.expect("wrong_states.prepare_on_started", BAD_STATE, c.prepare(s))
            self.expect("wrong_states.commit_on_started", BAD_STATE, c.commit(s))
            self.expect("wrong_states.expose_on_started", BAD_STATE, c.expose(s))
            res, cp = c.add(s, share)
            if not self.expect("wrong_states.add", OK, res):
                return
            copies.append((cp, share))
            self.expect("wrong_states.expose_on_added", BAD_STATE, c.expose(s))
            self.expect("wrong_states.recovery_complete_on_added", BAD_STATE, c.recovery_complete(s))
            self.expect("wrong_states.get_mapping_on_added", INVALID_XML_DOCUMENT, c.get_mapping(cp, s, share)[0])
            self.expect("wrong_states.delete_mapping_on_added", BAD_STATE, c.delete_mapping(s, cp, share))
            res, s2 = c.start()
            self.expect("wrong_states.start_while_added", SET_IN_PROGRESS, res)
            if res == OK:
                self.cleanup(s2)
            self.expect("wrong_states.abort", OK, c.abort(s))
        finally:
            self.cleanup(s, copies)

    def _create(self, prefix, ctx, shares):
        """SetContext..Add for each share. Returns (set_id, [(copy_id, unc)]) or None."""
        c = self.c
        self.expect(prefix + ".set_context", OK, c.set_context(ctx))
        res, s = c.start()
        if not self.expect(prefix + ".start", OK, res):
            return None, []
        copies = []
        for i, sh in enumerate(shares):
            res, cp = c.add(s, self.unc(sh))
            copies.append((cp, self.unc(sh)))
            self.expect(prefix + ".add%s" % (i + 1 if i else ""), OK, res)
        return s, copies

    def _session(self):
        conn = SMBConnection(self.args.host, self.args.host, sess_port=self.args.port)
        conn.login(self.args.user, self.args.password)
        return conn

    @staticmethod
    def _list(conn, name):
        """List the root of a share; None on success, else the error."""
        try:
            conn.listPath(name, "*")
            return None
        except Exception as e:
            return e

    def _tree(self, conn, name):
        try:
            return conn.connectTree(name), None
        except Exception as e:
            return None, e

    def sc_full_cycle(self):
        c, share = self.c, self.args.share
        conn2 = self._session()   # opened before the first step: the steps run back to back
        s, copies = self._create("full_cycle", CTX_BACKUP, self.shares())
        if s is None:
            conn2.close()
            return
        try:
            self.expect("full_cycle.prepare", OK, c.prepare(s, 240000))
            self.expect("full_cycle.commit", OK, c.commit(s, 180000))
            cp0, unc0 = copies[0]
            # wrong-state calls on the Committed set (Samba column of fsrvp.md 4.3)
            self.expect("full_cycle.add_on_committed", BAD_STATE, c.add(s, unc0)[0])
            self.expect("full_cycle.prepare_on_committed", BAD_STATE, c.prepare(s))
            self.expect("full_cycle.commit_on_committed", BAD_STATE, c.commit(s))
            self.expect("full_cycle.recovery_complete_on_committed", BAD_STATE, c.recovery_complete(s))
            self.expect("full_cycle.get_mapping_on_committed", INVALID_XML_DOCUMENT, c.get_mapping(cp0, s, unc0)[0])
            self.expect("full_cycle.delete_mapping_on_committed", BAD_STATE, c.delete_mapping(s, cp0, unc0))
            res, s2 = c.start()
            self.expect("full_cycle.start_while_committed", SET_IN_PROGRESS, res)
            if res == OK:
                self.cleanup(s2)
            self.expect("full_cycle.abort_committed_noop", OK, c.abort(s))
            self.expect("full_cycle.expose", OK, c.expose(s, 120000))
            self.expect("full_cycle.expose_again", BAD_STATE, c.expose(s))
            names = []
            for i, (cp, unc) in enumerate(copies):
                sh = self.shares()[i]
                tag = "full_cycle.get_mapping%s" % (i + 1 if i else "")
                res, body = c.get_mapping(cp, s, unc, 1)
                self.expect(tag, OK, res)
                try:
                    m = parse_share_mapping(body)
                except ValueError as e:
                    self.bad(tag + ".parse", "a level-1 mapping", e)
                    continue
                self.truth(tag + ".ids", m.get("set") == s and m.get("copy") == cp,
                           "set %s copy %s" % (m.get("set"), m.get("copy")), "set %s copy %s" % (s, cp))
                want = "%s@{%s}" % (sh, cp)
                name = m.get("name") or ""
                self.truth(tag + ".share_name", name.lower() == want.lower(), repr(name), repr(want))
                unc_got = m.get("unc") or ""
                self.truth(tag + ".share_unc", unc_got.rstrip("\\").lower().endswith("\\" + sh.lower())
                           and unc_got.startswith("\\\\"), repr(unc_got), "\\\\HOST\\%s" % sh)
                self.truth(tag + ".timestamp", m.get("tstamp", 0) > 116444736000000000,
                           m.get("tstamp"), "a FILETIME after 1970")
                names.append(name or want)
            self.expect("full_cycle.get_mapping_level2", E_INVALIDARG, c.get_mapping(cp0, s, unc0, 2)[0])
            self.expect("full_cycle.get_mapping_unknown_copy", E_INVALIDARG,
                        c.get_mapping(uuid.uuid4(), s, unc0)[0])
            self.expect("full_cycle.get_mapping_unknown_share", E_INVALIDARG,
                        c.get_mapping(cp0, s, self.unc("no_such_share_fsrvp"))[0])
            self.expect("full_cycle.abort_exposed_noop", OK, c.abort(s))
            for i, name in enumerate(names):
                sfx = i + 1 if i else ""
                tid, err = self._tree(conn2, name)
                self.truth("full_cycle.tree_connect%s" % sfx, tid is not None,
                           name if err is None else err, "tree connect to %s succeeds" % name)
                if tid is not None:
                    err = self._list(conn2, name)
                    self.truth("full_cycle.tree_list%s" % sfx, err is None, err or "listed", "a directory listing")
            self.expect("full_cycle.delete_unknown_copy", E_INVALIDARG, c.delete_mapping(s, uuid.uuid4(), unc0))
            for i, (cp, unc) in enumerate(copies):
                self.expect("full_cycle.delete%s" % (i + 1 if i else ""), OK, c.delete_mapping(s, cp, unc))
            self.expect("full_cycle.delete_again", OBJECT_NOT_FOUND, c.delete_mapping(s, cp0, unc0))
            self.expect("full_cycle.get_mapping_after_delete", E_INVALIDARG, c.get_mapping(cp0, s, unc0)[0])
            # impacket caches tree ids by share name: ask a fresh session for a new tree connect
            conn3 = self._session()
            try:
                for i, name in enumerate(names):
                    sfx = i + 1 if i else ""
                    err = self._list(conn2, name)   # I/O on the tree connected before the delete
                    self.truth("full_cycle.old_tree_after_delete%s" % sfx, err is not None,
                               "refused (%s)" % err if err else "listed", "refused")
                    tid, err = self._tree(conn3, name)
                    self.truth("full_cycle.tree_connect_after_delete%s" % sfx, tid is None,
                               "refused (%s)" % err if err else "connected", "refused")
            finally:
                conn3.close()
        finally:
            self.cleanup(s, copies)
            conn2.close()

    def sc_rw_cycle(self):
        c = self.c
        s, copies = self._create("rw_cycle", CTX_APP_ROLLBACK | ATTR_AUTO_RECOVERY, [self.args.share])
        if s is None:
            return
        try:
            cp, unc = copies[0]
            self.expect("rw_cycle.prepare", OK, c.prepare(s))
            self.expect("rw_cycle.commit", OK, c.commit(s))
            self.expect("rw_cycle.expose", OK, c.expose(s))
            self.expect("rw_cycle.recovery_complete", OK, c.recovery_complete(s))
            self.expect("rw_cycle.recovery_complete_again", BAD_STATE, c.recovery_complete(s))
            self.expect("rw_cycle.get_mapping_on_recovered", OK, c.get_mapping(cp, s, unc)[0])
            res, s2 = c.start()   # RecoveryComplete clears ContextSet
            self.expect("rw_cycle.start_after_recovery", BAD_STATE, res)
            if res == OK:
                self.cleanup(s2)
            self.expect("rw_cycle.delete", OK, c.delete_mapping(s, cp, unc))
        finally:
            self.cleanup(s, copies)

    def sc_abort(self):
        c, share = self.c, self.unc(self.args.share)
        self.expect("abort.set_context", OK, c.set_context(CTX_BACKUP))
        res, s = c.start()
        if self.expect("abort.start", OK, res):
            cp = None
            try:
                self.expect("abort.abort_started", OK, c.abort(s))
                res, cp = c.add(s, share)
                self.expect("abort.add_after_abort", E_INVALIDARG, res)
                self.expect("abort.abort_again", E_INVALIDARG, c.abort(s))
            finally:
                self.cleanup(s, [(cp, share)] if cp else [])
        res, s = c.start()
        if self.expect("abort.start2", OK, res):
            copies = []
            try:
                res, cp = c.add(s, share)
                copies.append((cp, share))
                self.expect("abort.add", OK, res)
                self.expect("abort.abort_added", OK, c.abort(s))
                self.expect("abort.prepare_after_abort", E_INVALIDARG, c.prepare(s))
            finally:
                self.cleanup(s, copies)

    def sc_commit_timeout(self):
        """Umbra honours TimeOutInMilliseconds: a commit that cannot finish in 1 ms is aborted
        with FSSAGENT_E_TIMEOUT and the set is back in Added (Samba ignores the timeout)."""
        if self.args.server != "umbra":
            return
        c, share = self.c, self.unc(self.args.share)
        self.expect("commit_timeout.set_context", OK, c.set_context(CTX_BACKUP))
        res, s = c.start()
        if self.expect("commit_timeout.start", OK, res):
            copies = []
            try:
                res, cp = c.add(s, share)
                copies.append((cp, share))
                self.expect("commit_timeout.add", OK, res)
                self.expect("commit_timeout.commit_1ms", 0x80042500, c.commit(s, 1))
                self.expect("commit_timeout.expose_after", BAD_STATE, c.expose(s))
                self.expect("commit_timeout.commit_again", OK, c.commit(s))
                self.expect("commit_timeout.expose", OK, c.expose(s))
                for cp, sh in copies:
                    self.expect("commit_timeout.delete", OK, c.delete_mapping(s, cp, sh))
                copies = []
            finally:
                self.cleanup(s, copies)

    def sc_malformed(self):
        set_id, share = uuid.uuid4(), self.unc(self.args.share)
        good_add = st_add(set_id, share)
        name_enc = (share + "\0").encode("utf-16-le")
        pad = lambda b: b + b"\0" * (-len(b) % 4)
        cases = [
            ("truncated_add", OP_ADD, good_add[:32 + 6], BAD_STUB_FAULTS),
            ("string_offset_nonzero", OP_ADD,
             guid(uuid.uuid4()) + guid(set_id) + wstr(share, offset=2), BAD_STUB_FAULTS),
            ("string_actual_gt_max", OP_ADD,
             guid(uuid.uuid4()) + guid(set_id) + pad(struct.pack("<III", 3, 0, len(name_enc) // 2) + name_enc),
             BAD_STUB_FAULTS),
            ("string_past_end", OP_IS_PATH_SUPPORTED, struct.pack("<III", 200, 0, 200) + name_enc,
             BAD_STUB_FAULTS),
            ("empty_set_context", OP_SET_CONTEXT, b"", BAD_STUB_FAULTS),
            ("opnum_13", 13, b"", (OP_RNG_ERROR,)),
        ]
        for tag, opnum, stub, faults in cases:
            name = "malformed." + tag
            try:
                cl = Client(self.args)
            except Exception as e:
                self.bad(name, "a connection", e)
                continue
            try:
                try:
                    res, _ = cl.call(opnum, stub)
                    self.expect(name, tuple(Fault(f) for f in faults), res)
                except Fault as f:
                    self.expect(name, tuple(Fault(x) for x in faults), f)
                except Exception as e:
                    self.bad(name, " or ".join(fmt(Fault(x)) for x in faults), "connection error: %r" % e)
            finally:
                cl.close()
            try:
                cl = Client(self.args)
                try:
                    res, lo, hi = cl.get_version()
                    self.expect(name + ".server_alive", OK, res)
                finally:
                    cl.close()
            except Exception as e:
                self.bad(name + ".server_alive", "GetSupportedVersion = 0 on a new connection", e)

    def sc_has_shadow_copy(self):
        c, share = self.c, self.unc(self.args.share)
        if self.samba:
            self.expect("has_shadow_copy.share", NOT_SUPPORTED, c.is_path_shadow_copied(share)[0])
            self.expect("has_shadow_copy.unknown_share", NOT_SUPPORTED,
                        c.is_path_shadow_copied(self.unc("no_such_share_fsrvp"))[0])
            return
        res, present, _ = c.is_path_shadow_copied(share)
        if self.expect("has_shadow_copy.before", OK, res):
            self.truth("has_shadow_copy.before_present", present == 0, str(present), "0")
        self.expect("has_shadow_copy.unknown_share", E_INVALIDARG,
                    c.is_path_shadow_copied(self.unc("no_such_share_fsrvp"))[0])
        s, copies = self._create("has_shadow_copy", CTX_BACKUP, [self.args.share])
        if s is None:
            return
        try:
            self.expect("has_shadow_copy.prepare", OK, c.prepare(s))
            self.expect("has_shadow_copy.commit", OK, c.commit(s))
            res, present, _ = c.is_path_shadow_copied(share)
            if self.expect("has_shadow_copy.after_commit", OK, res):
                self.truth("has_shadow_copy.after_commit_present", present == 1, str(present), "1")
            if self.args.share2:
                res, present, _ = c.is_path_shadow_copied(self.unc(self.args.share2))
                if self.expect("has_shadow_copy.share2", OK, res):
                    self.truth("has_shadow_copy.share2_present", present == 0, str(present), "0 (other volume)")
            self.expect("has_shadow_copy.expose", OK, c.expose(s))
            cp, unc = copies[0]
            self.expect("has_shadow_copy.delete", OK, c.delete_mapping(s, cp, unc))
            res, present, _ = c.is_path_shadow_copied(share)
            if self.expect("has_shadow_copy.after_delete", OK, res):
                self.truth("has_shadow_copy.after_delete_present", present == 0, str(present), "0")
        finally:
            self.cleanup(s, copies)

    def sc_is_path_supported(self):
        c = self.c
        for tag, unc in (("share", self.unc(self.args.share)),
                         ("share_no_backslash", self.unc(self.args.share, trailing=False))):
            res, supported, owner = c.is_path_supported(unc)
            self.expect("is_path_supported.%s" % tag, OK, res)
            self.truth("is_path_supported.%s_supported" % tag, supported == 1, supported, "1")
            self.truth("is_path_supported.%s_owner" % tag, bool(owner), repr(owner), "a non-empty machine name")
        self.expect("is_path_supported.unknown_share", E_INVALIDARG,
                    c.is_path_supported(self.unc("no_such_share_fsrvp"))[0])
        if self.samba:
            self.expect("is_path_supported.not_snapshot_capable", NOT_SUPPORTED,
                        c.is_path_supported(self.unc("share"))[0])

    def sc_timer(self):
        if self.args.timer_seconds is None:
            print("SKIP timer: needs --timer-seconds", flush=True)
            return
        c, share = self.c, self.unc(self.args.share)
        steps = ["set_context", "start", "add", "prepare", "commit"]
        expected_next = {"set_context": ("start", BAD_STATE), "start": ("add", E_INVALIDARG),
                         "add": ("prepare", E_INVALIDARG), "prepare": ("commit", E_INVALIDARG),
                         "commit": ("expose", E_INVALIDARG)}
        for last in steps:
            s, copies, name = None, [], None
            try:
                ok = True
                for step in steps[:steps.index(last) + 1]:
                    if step == "set_context":
                        res = c.set_context(CTX_BACKUP)
                    elif step == "start":
                        res, s = c.start()
                    elif step == "add":
                        res, cp = c.add(s, share)
                        copies.append((cp, share))
                    elif step == "prepare":
                        res = c.prepare(s)
                    else:
                        res = c.commit(s)
                    if res != OK:
                        self.bad("timer.%s_then_sleep.%s" % (last, step), fmt(OK), res)
                        ok = False
                        break
                if not ok:
                    continue
                self.sleep_timer()
                nxt, want = expected_next[last]
                name = "timer.%s_then_sleep.%s" % (last, nxt)
                if nxt == "start":
                    res, s2 = c.start()
                    if res == OK:
                        self.cleanup(s2)
                elif nxt == "add":
                    res, _ = c.add(s, share)
                elif nxt == "prepare":
                    res = c.prepare(s)
                elif nxt == "commit":
                    res = c.commit(s)
                else:
                    res = c.expose(s)
                self.expect(name, want, res)
            finally:
                if s is not None:
                    self.cleanup(s, copies)
        # an Exposed set survives the timer (fsrvp.md 4.4)
        s, copies = self._create("timer.exposed", CTX_BACKUP, [self.args.share])
        if s is None:
            return
        try:
            cp, unc = copies[0]
            self.expect("timer.exposed.prepare", OK, c.prepare(s))
            self.expect("timer.exposed.commit", OK, c.commit(s))
            self.expect("timer.exposed.expose", OK, c.expose(s))
            self.sleep_timer()
            self.expect("timer.exposed_then_sleep.get_mapping", OK, c.get_mapping(cp, s, unc)[0])
            self.expect("timer.exposed_then_sleep.start", BAD_STATE, c.start()[0])
            self.expect("timer.exposed_then_sleep.delete", OK, c.delete_mapping(s, cp, unc))
        finally:
            self.cleanup(s, copies)

    def sc_denied(self):
        if not self.args.denied_user:
            print("SKIP denied: needs --denied-user", flush=True)
            return
        s, cp, share = uuid.uuid4(), uuid.uuid4(), self.unc(self.args.share)
        stubs = {
            OP_GET_VERSION: st_get_version(),
            OP_SET_CONTEXT: st_set_context(CTX_BACKUP),
            OP_START: st_start(),
            OP_ADD: st_add(s, share),
            OP_COMMIT: st_set_timeout(s, 180000),
            OP_EXPOSE: st_set_timeout(s, 120000),
            OP_RECOVERY: st_set(s),
            OP_ABORT: st_set(s),
            OP_IS_PATH_SUPPORTED: st_share(share),
            OP_IS_PATH_SHADOW_COPIED: st_share(share),
            OP_GET_MAPPING: st_get_mapping(cp, s, share, 1),
            OP_DELETE_MAPPING: st_delete_mapping(s, cp, share),
            OP_PREPARE: st_set_timeout(s, 240000),
        }
        cl = Client(self.args, self.args.denied_user, self.args.denied_password)
        try:
            for op in range(13):
                name = "denied.opnum_%d" % op
                try:
                    res, _ = cl.call(op, stubs[op])
                    self.expect(name, E_ACCESSDENIED, res)
                    if op == OP_START and res == OK:
                        self.cleanup(Reader(_).guid())
                except Fault as f:
                    self.expect(name, E_ACCESSDENIED, f)
        finally:
            cl.close()

    SCENARIOS = ["version", "context", "start_without_context", "unknown_ids", "add_rules", "wrong_states",
                 "full_cycle", "rw_cycle", "abort", "commit_timeout", "has_shadow_copy", "is_path_supported", "timer",
                 "malformed", "denied"]

    def run(self, only):
        for name in only or self.SCENARIOS:
            try:
                getattr(self, "sc_" + name)()
            except Exception as e:
                self.bad(name + ".exception", "no exception", "%s: %s" % (type(e).__name__, e))
                self.drop_client()   # the connection may be unusable; the next scenario reconnects
        self.drop_client()
        print("fsrvp_codes: %d passed, %d failed" % (self.passed, self.failed), flush=True)
        return 1 if self.failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=445)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--share", required=True, help="a snapshot-capable share")
    p.add_argument("--share2", help="a second snapshot-capable share on a different volume")
    p.add_argument("--denied-user")
    p.add_argument("--denied-password")
    p.add_argument("--timer-seconds", type=float)
    p.add_argument("--server", choices=["umbra", "samba"], default="umbra")
    p.add_argument("--only", nargs="+", choices=Runner.SCENARIOS, metavar="SCENARIO")
    p.add_argument("--skip", nargs="+", choices=Runner.SCENARIOS, metavar="SCENARIO", default=[])
    args = p.parse_args()
    if args.denied_user and args.denied_password is None:
        p.error("--denied-user needs --denied-password")
    only = args.only or [s for s in Runner.SCENARIOS if s not in args.skip]
    sys.exit(Runner(args).run(only))


if __name__ == "__main__":
    main()
