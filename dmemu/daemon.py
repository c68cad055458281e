"""dmemud: the server loop, client connections and the operations they may ask for.

One trio task reads each connection; every request runs in its own task so that a request
that waits (a revocation waiting for other clients) never stops this connection's
acknowledgements from being read. Only DmemuError (a refusal in the kernel's voice) goes back
to a client as an error; anything else is a bug, logged with its traceback, and answered EIO.
"""
import errno
import fcntl
import logging
import os
import socket
import struct
import time

import trio

from . import protocol, requests
from .errors import DmemuError, busy, invalid
from .kernel import Kernel
from .paths import StatePaths
from .units import parse_size

log = logging.getLogger(__name__)

VERSION = 1

# Operations after which devices may have appeared, gone, been renamed or resized: each
# bumps the server's device generation, so that a watcher (the device view) follows without
# re-reading the lists on every lookup. Failed attempts bump too; a spurious bump is harmless.
DEVICE_CHANGING_OPS = frozenset({"create_namespace", "reconfigure_namespace", "destroy", "create_disk", "disable", "enable",
                                 "power_fail", "dm_create", "dm_resume", "dm_remove", "dm_rename"})


class Connection:
    def __init__(self, server: "Server", stream: trio.SocketStream, pid: int):
        self.server = server
        self.stream = stream
        self.pid = pid
        self.prog = "?"
        self.handles: set[int] = set()
        self._send_lock = trio.Lock()
        self._acks: dict[int, list] = {}
        self._next_eid = 1
        self.closed = False

    async def send(self, obj: dict, payload: bytes = b"") -> None:
        async with self._send_lock:
            await self.stream.send_all(protocol.encode(obj, payload))

    async def event(self, kind: str, /, *, timeout: float, **args) -> bool:
        """Send an event and wait for its acknowledgement; False if none came in time."""
        if self.closed:
            return True     # a closed connection holds nothing any more
        eid = self._next_eid
        self._next_eid += 1
        done = trio.Event()
        self._acks[eid] = [done, None]
        try:
            await self.send({"event": kind, "eid": eid, **args})
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._acks.pop(eid, None)
            return True
        with trio.move_on_after(timeout):
            await done.wait()
        slot = self._acks.pop(eid, None)
        if not done.is_set():
            log.warning("pid %d (%s) did not acknowledge %s within %ss", self.pid, self.prog, kind, timeout)
            return False
        if slot is not None and isinstance(slot[1], dict) and slot[1].get("error"):
            log.warning("pid %d (%s) could not carry out %s: %s", self.pid, self.prog, kind,
                        slot[1]["error"])
            return False
        return slot is not None

    def _ack(self, obj: dict) -> None:
        slot = self._acks.get(obj["ack"])
        if slot:
            slot[1] = obj
            slot[0].set()

    def _release_all(self) -> None:
        self.closed = True
        for slot in self._acks.values():
            slot[0].set()
        kernel = self.server.kernel
        for hid in list(self.handles):
            h = kernel.handles.get(hid)
            if h is not None:
                kernel.close(h)
        self.handles.clear()

    async def serve(self) -> None:
        reader = protocol.FrameReader(self.stream)
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        frame = await reader.read()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        frame = None
                    except protocol.FrameError as e:
                        await self._refuse_frame(str(e))
                        frame = None
                    if frame is not None and "ack" in frame[0]:
                        try:
                            requests.check_ack(frame[0])
                        except DmemuError as e:
                            await self._refuse_frame(e.message)
                            frame = None
                    if frame is None:
                        nursery.cancel_scope.cancel()
                        break
                    obj, payload = frame
                    if "ack" in obj:
                        self._ack(obj)
                    else:
                        nursery.start_soon(self._request, obj, payload)
        finally:
            self._release_all()
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _refuse_frame(self, why: str) -> None:
        """Answer a frame that cannot be trusted; the caller then closes the connection."""
        log.warning("pid %d (%s): bad frame: %s; connection closed", self.pid, self.prog, why)
        try:
            await self.send({"id": None, "error": {"errno": errno.EPROTO,
                                                   "message": f"dmemud: bad frame: {why}; connection closed"}})
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _request(self, obj: dict, payload: bytes) -> None:
        rid = requests.request_id(obj)
        op = obj.get("op") if isinstance(obj.get("op"), str) else "?"
        try:
            op = requests.check_request(obj, payload)
            handler = getattr(self.server, "op_" + op)
            result = await handler(self, obj, payload)
            if isinstance(result, tuple):
                result, data = result
            else:
                data = b""
            reply = {"id": rid, "ok": result if result is not None else {}}
        except DmemuError as e:
            reply, data = {"id": rid, "error": e.to_wire()}, b""
        except Exception:
            log.exception("operation %s failed", op[:64])
            reply, data = {"id": rid, "error": {"errno": errno.EIO,
                                                "message": f"dmemud: internal error in {op[:64]}; see {self.server.paths.log}"}}, b""
        if op in DEVICE_CHANGING_OPS:
            self.server.devices_changed()     # before the reply: its sender may look at once
        try:
            await self.send(reply, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        if self.server.stopping:
            self.server.stop.set()


# The request has passed requests.check_request: a field is absent, null, or of its kind.

def _int(obj: dict, key: str, default=None) -> int | None:
    v = obj.get(key)
    return default if v is None else v


def _str(obj: dict, key: str) -> str:
    v = obj.get(key)
    return "" if v is None else v


class Server:
    def __init__(self, paths: StatePaths):
        self.paths = paths
        self.kernel = Kernel(paths)
        self.started = time.time()
        self.connections: set[Connection] = set()
        self.stop = trio.Event()
        self.stopping = False
        self.generation = 0
        self._changed = trio.Event()

    def devices_changed(self) -> None:
        self.generation += 1
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.kernel.boot()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = str(self.paths.socket)
        if os.path.exists(path):
            os.unlink(path)     # stale: we hold the daemon lock, so nobody serves it
        old = os.umask(0o177)
        try:
            await sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(128)
        listener = trio.SocketListener(sock)
        log.info("dmemud %d listening on %s", os.getpid(), path)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.kernel.serve_background)
                nursery.start_soon(self._accept, listener, nursery)
                task_status.started()
                await self.stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                self.kernel.shutdown()
                log.info("dmemud %d stopped", os.getpid())

    async def _accept(self, listener, nursery) -> None:
        while True:
            stream = await listener.accept()
            creds = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _ = struct.unpack("3i", creds)
            if uid not in (0, os.geteuid()):
                await stream.aclose()
                continue
            conn = Connection(self, stream, pid)
            nursery.start_soon(self._serve, conn)

    async def _serve(self, conn: Connection) -> None:
        self.connections.add(conn)
        try:
            await conn.serve()
        except Exception:
            # A bug in serving one connection ends that connection, never the daemon.
            log.exception("connection of pid %d (%s) failed; closed", conn.pid, conn.prog)
        finally:
            self.connections.discard(conn)

    # -- operations ------------------------------------------------------------------------
    # Each takes (connection, request, payload) and returns a JSON-able dict, optionally with
    # a payload as (dict, bytes).

    async def op_hello(self, conn, req, payload):
        conn.prog = str(req.get("prog", "?"))[:64]
        return {"version": VERSION, "pid": os.getpid(), "root": str(self.paths.root),
                "boot_lost": self.kernel.boot_lost}

    async def op_status(self, conn, req, payload):
        k = self.kernel
        return {"pid": os.getpid(), "root": str(self.paths.root), "uptime": time.time() - self.started,
                "profile": k.settings.profile,
                "connections": len(self.connections),
                "opens": [{"device": h.device.name, "pid": h.conn.pid, "prog": h.conn.prog,
                           "exclusive": h.exclusive, "read_only": h.read_only,
                           "mounted": h.exclusive and not h.unmounted}
                          for h in k.handles.values() if not h.dead]}

    async def op_shutdown(self, conn, req, payload):
        k = self.kernel
        users = [h for h in k.handles.values() if not h.dead and h.conn is not conn]
        if users and not req.get("force"):
            raise busy("dmemud has devices in use by " + ", ".join(sorted({h.describe() for h in users}))
                       + "; unmount or close them first, or use --force")
        await k.kill_handles(users, "dmemud shut down")
        self.stopping = True     # stop once this reply has gone out
        return {}

    async def op_changes(self, conn, req, payload):
        """The device generation; with ``wait``, answered only once it differs from ``since``."""
        since = _int(req, "since")
        while req.get("wait") and since == self.generation:
            await self._changed.wait()
        return {"generation": self.generation}

    async def op_create_namespace(self, conn, req, payload):
        size = parse_size(req.get("size", ""), what="size")
        align = parse_size(req["align"], what="align") if req.get("align") is not None else None
        spec = self.kernel.create_namespace(size, align, req.get("mode") or "fsdax",
                                            req.get("name") or "", req.get("persistence") or "eadr",
                                            req.get("sector_size"))
        return {"namespace": spec_json(spec, self.kernel.devices.get(spec.blockdev))}

    async def op_reconfigure_namespace(self, conn, req, payload):
        spec = self.kernel.reconfigure_namespace(str(req.get("namespace", "")),
                                                 str(req.get("mode") or "fsdax"),
                                                 bool(req.get("force")), req.get("name"),
                                                 req.get("sector_size"))
        return {"namespace": spec_json(spec, self.kernel.devices.get(spec.blockdev))}

    async def op_list(self, conn, req, payload):
        kind = req.get("kind")
        return {"devices": [spec_json(s, self.kernel.devices.get(s.blockdev))
                            for s in self.kernel.specs if not kind or s.kind == kind]}

    async def op_destroy(self, conn, req, payload):
        spec = self.kernel.destroy(_str(req, "device"), req.get("kind") or "pmem")
        return {"device": spec_json(spec)}

    async def op_create_disk(self, conn, req, payload):
        size = parse_size(req.get("size", ""), what="size")
        spec = self.kernel.create_disk(size, req.get("name"))
        return {"disk": spec_json(spec)}

    async def op_inject_error(self, conn, req, payload):
        spec = await self.kernel.inject_error(_str(req, "device"), _int(req, "sector", 0),
                                              _int(req, "count", 1))
        return {"device": spec_json(spec)}

    async def op_clear_error(self, conn, req, payload):
        spec = await self.kernel.clear_error(_str(req, "device"), _int(req, "sector"),
                                             _int(req, "count"))
        return {"device": spec_json(spec)}

    async def op_disable(self, conn, req, payload):
        return {"device": spec_json(await self.kernel.disable(_str(req, "device")))}

    async def op_enable(self, conn, req, payload):
        return {"device": spec_json(await self.kernel.enable(_str(req, "device")))}

    async def op_power_fail(self, conn, req, payload):
        lost = await self.kernel.power_fail(req.get("devices") or [],
                                            bool(req.get("tear")), _int(req, "seed"))
        return {"lost": lost}

    async def op_trace(self, conn, req, payload):
        dev = _str(req, "device")
        if req.get("action") == "start":
            return await self.kernel.trace_start(dev)
        if req.get("action") == "stop":
            return await self.kernel.trace_stop(dev)
        raise invalid("trace action must be start or stop")

    async def op_open(self, conn, req, payload):
        h = self.kernel.open(conn, _str(req, "device"), bool(req.get("exclusive")),
                             bool(req.get("read_only")))
        conn.handles.add(h.id)
        if req.get("log"):
            log.info("%s opened %s by pid %s (%s), which logs to %s", h.device.name,
                     "exclusive" if h.exclusive else "read-only" if h.read_only else "shared",
                     conn.pid, conn.prog, str(req["log"])[:4096])
        return self.kernel.info(h)

    async def op_unmounted(self, conn, req, payload):
        """The filesystem on this handle was unmounted; it closes once its last commit is
        written. Until then the device is open but no longer mounted."""
        self.kernel.handle(conn, _int(req, "handle")).unmounted = True
        return {}

    async def op_close(self, conn, req, payload):
        h = self.kernel.handles.get(_int(req, "handle"))
        if h is not None and h.conn is conn:
            self.kernel.close(h)
            conn.handles.discard(h.id)
        return {}

    async def op_resolve(self, conn, req, payload):
        h = self.kernel.handle(conn, _int(req, "handle"))
        return await self.kernel.resolve(h, _int(req, "sector"), _int(req, "nr"), bool(req.get("write")))

    async def op_bio(self, conn, req, payload):
        h = self.kernel.handle(conn, _int(req, "handle"))
        data, changed = await self.kernel.bio(h, _str(req, "bio"), _int(req, "sector", 0), payload,
                                        _int(req, "nbytes", 0) or 0, bool(req.get("fua")),
                                        bool(req.get("preflush")))
        if changed:
            await self.kernel.revoke(lambda lease: any(lease.reaches(b, 0, b.nr_sectors) for b in changed),
                                     "media errors changed")
        return {}, data

    # -- device-mapper ioctls ----------------------------------------------------------------

    def _dm_reply(self, md) -> dict:
        return self.kernel.dm.info(md)

    async def op_dm_create(self, conn, req, payload):
        dm = self.kernel.dm
        md = dm.create(_str(req, "name"), str(req.get("uuid") or ""), bool(req.get("read_only")))
        table = req.get("table")
        if table is not None:
            try:
                await dm.load(md.name, table)
                await dm.resume(md.name)
            except BaseException:
                # dmsetup create is all or nothing: no half-made device is left behind.
                await dm.remove(md.name, force=False)
                raise
        return self._dm_reply(md)

    async def op_dm_load(self, conn, req, payload):
        return self._dm_reply(await self.kernel.dm.load(_str(req, "name"), _str(req, "table")))

    async def op_dm_clear(self, conn, req, payload):
        return self._dm_reply(await self.kernel.dm.clear(_str(req, "name")))

    async def op_dm_suspend(self, conn, req, payload):
        md = await self.kernel.dm.suspend(_str(req, "name"), noflush=bool(req.get("noflush")),
                                          nolockfs=bool(req.get("nolockfs")))
        return self._dm_reply(md)

    async def op_dm_resume(self, conn, req, payload):
        return self._dm_reply(await self.kernel.dm.resume(_str(req, "name")))

    async def op_dm_remove(self, conn, req, payload):
        await self.kernel.dm.remove(_str(req, "name"), force=bool(req.get("force")))
        return {}

    async def op_dm_rename(self, conn, req, payload):
        md = self.kernel.dm.rename(_str(req, "name"), req.get("new"), req.get("uuid"))
        return self._dm_reply(md)

    async def op_dm_message(self, conn, req, payload):
        return {"reply": self.kernel.dm.message(_str(req, "name"), _int(req, "sector", 0),
                                                req.get("words") or [])}

    async def op_dm_wait(self, conn, req, payload):
        dm = self.kernel.dm
        md = dm.get(_str(req, "name"))
        nr = _int(req, "event_nr", md.event_nr)
        return {"event_nr": await dm.wait_event(md, nr)}

    async def op_dm_list(self, conn, req, payload):
        dm = self.kernel.dm
        out = []
        for md in sorted(dm.devices.values(), key=lambda m: m.name):
            d = dm.info(md)
            d["table"] = dm.table_lines(md)
            d["inactive_table"] = dm.table_lines(md, inactive=True)
            d["status"] = dm.table_lines(md, status=True)
            out.append(d)
        bases = {b.devno: b.name for b in self.kernel.devices.values()}
        return {"devices": out, "bases": bases}

    async def op_dm_targets(self, conn, req, payload):
        from .dm.targets import TARGETS
        return {"targets": [[t.name, list(t.version)] for t in TARGETS.values()]}

    async def op_dm_param(self, conn, req, payload):
        params = self.kernel.dm.params
        name = req.get("param")
        if name is not None:
            if name not in params:
                raise invalid(f"unknown parameter '{name}': known are {', '.join(params)}")
            if req.get("value") is not None:
                self.kernel.settings.set_param(name, bool(req["value"]))
        return {"params": params}

    async def op_profile(self, conn, req, payload):
        settings = self.kernel.settings
        if req.get("profile") is not None:
            settings.set_profile(str(req["profile"]))
        return {"profile": settings.profile, "params": settings.params}

    async def op_printk(self, conn, req, payload):
        """A line for the kernel log from a client that plays a kernel part (a filesystem's
        errors, as ext4's go to dmesg). One printable line: the ring is read by people."""
        line = "".join(c if c.isprintable() else " " for c in str(req["line"]))
        self.kernel.printk(line)
        return {}

    async def op_dmesg(self, conn, req, payload):
        lines = [f"[{t:12.6f}] {text}" for t, text in self.kernel.log_ring]
        if req.get("clear"):
            self.kernel.log_ring.clear()
        return {"lines": lines}


def spec_json(spec, dev=None) -> dict:
    d = {"kind": spec.kind, "blockdev": spec.blockdev, "devno": spec.devno, "size": spec.size,
         "uuid": spec.uuid, "model": spec.model, "dax": spec.dax_capable, "enabled": spec.enabled,
         "badblocks": spec.badblocks}
    if spec.kind == "pmem":
        d.update(dev=spec.dev, name=spec.name, mode=spec.mode, align=spec.align,
                 chardev=spec.chardev, sector_size=spec.sector_size)
        if getattr(dev, "btt", None) is not None:
            d["btt_size"] = dev.nr_sectors * 512     # what the block device exports
    return d


class DaemonLock:
    """Held for the daemon's lifetime, so two daemons never serve one state directory."""

    def __init__(self, paths: StatePaths):
        self.paths = paths
        self.fd = None

    def acquire(self) -> None:
        fd = os.open(self.paths.pidfile, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise DmemuError(errno.EEXIST, f"dmemud is already running (pid {other or '?'}) "
                                           f"in {self.paths.root}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None
