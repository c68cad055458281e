#!/bin/sh
# The daxfs + dmemu demo on its built-in default: a private dmemud state directory, a DAX
# pmem namespace, a non-DAX one and a disk, then power failure and media errors, printing
# each command and its output as a shell session would. Cleans up after itself.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
PATH="$top/tools:$PATH"
DMEMU_ROOT=${DMEMU_ROOT:-$(mktemp -d /tmp/daxfs-demo.XXXXXX)}
export PATH DMEMU_ROOT

run() {
    printf '\n$ %s\n' "$*"
    "$@"
}
cleanup() {
    dmemud stop --force >/dev/null 2>&1 || true
    case "$DMEMU_ROOT" in /tmp/daxfs-demo.*) rm -rf "$DMEMU_ROOT" ;; esac
}
trap cleanup EXIT

echo "# dmemu state directory: $DMEMU_ROOT (dmemud starts on first use)"
run ndctl create-namespace --size 64M
run ndctl create-namespace --size 32M --persistence adr --name adr-ns
run ndctl create-namespace --size 16M --mode raw
run dmemu disk create --size 32M
run dmemu lsblk
run dmemud status

echo
echo "# power failure: eadr keeps every store, adr only flushed ones, a disk only flushed writes"
"$top/.venv/bin/python" - <<'PY'
import trio
from dmemu import client

async def main():
    for name in ("pmem0", "pmem1"):
        async with client.open_device("/dev/" + name) as dev:
            m = await dev.direct_access(0, 2, write=True)
            m.write(0, b"flushed")
            m.flush(0, 7)
            m.write(4096, b"not flushed")
            print(f"{name}: stored 'flushed' and flushed it, stored 'not flushed' only")
    async with client.open_device("/dev/disk0") as dev:
        await dev.write(0, b"written, then flushed".ljust(512))
        await dev.flush()
        await dev.write(8, b"written, not flushed".ljust(512))
        print("disk0 (write cache): one write flushed, one not")
trio.run(main)
PY
run ndctl power-fail
"$top/.venv/bin/python" - <<'PY'
import trio
from dmemu import client

async def main():
    for name in ("pmem0", "pmem1"):
        async with client.open_device("/dev/" + name, read_only=True) as dev:
            print(f"{name} after power failure:", await dev.read(0, 7), await dev.read(8, 11))
    async with client.open_device("/dev/disk0", read_only=True) as dev:
        print("disk0 after power failure:", (await dev.read(0, 21)), (await dev.read(8, 20)))
trio.run(main)
PY

echo
echo "# media errors: reads over a poisoned range fail with EIO"
run ndctl inject-error namespace0.0 --block 64 --count 8
run ndctl list --media-errors --namespace namespace0.0
"$top/.venv/bin/python" - <<'PY'
import trio
from dmemu import client

async def main():
    async with client.open_device("/dev/pmem0", read_only=True) as dev:
        try:
            await dev.read(64, 512)
        except OSError as e:
            print("read of sector 64:", e)
trio.run(main)
PY
run ndctl clear-errors namespace0.0

echo
echo "# refusals say what was wrong and change nothing"
run ndctl create-namespace --size 3M || true
run ndctl destroy-namespace namespace0.9 || true
run ndctl destroy-namespace namespace0.1
run ndctl destroy-namespace namespace0.2
run dmemu disk destroy disk0
run ndctl list
