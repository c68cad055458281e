"""Which entries the devices make, and how the tree of inodes follows them (no daemon, no mount)."""
import pytest

from dmemu.devview.names import entries, split_lvm_name
from dmemu.devview.tree import ROOT, Tree


@pytest.mark.parametrize("name, split", [
    ("vg0-lv0", ("vg0", "lv0", "")),
    ("my--vg-my--lv", ("my-vg", "my-lv", "")),
    ("vg-lv-real", ("vg", "lv", "real")),
    ("vg-snap-cow", ("vg", "snap", "cow")),
    ("a---b", ("a-", "b", "")),
    ("plain", None),
    ("vg-", None),
    ("-lv", None),
])
def test_split_lvm_name_like_libdevmapper(name, split):
    assert split_lvm_name(name) == split


def base(name, uuid, size=1 << 20, enabled=True, kind="pmem"):
    return {"kind": kind, "blockdev": name, "uuid": uuid, "size": size, "enabled": enabled}


def dm(name, minor, size=8, uuid="", read_only=False):
    return {"name": name, "minor": minor, "size": size, "uuid": uuid, "read_only": read_only}


def test_entries_name_devices_as_udev_and_lvm_do():
    devs, links = entries(
        [base("pmem0", "u0"), base("pmem1", "u1", enabled=False), base("disk0", "u2", kind="disk")],
        [dm("lin", 0), dm("vg0-lv--a", 1, uuid="LVM-x"), dm("vg0-lv--a-real", 2, uuid="LVM-x-real"),
         dm("pmem0-x", 3, uuid="LVM-y"), dm("odd", 4, uuid="LVM-z")])
    assert [(d.parent, d.name, d.ident, d.size) for d in devs] == [
        ("", "pmem0", "pmem0", 1 << 20), ("", "disk0", "disk0", 1 << 20),
        ("mapper", "lin", "dm-0", 4096), ("mapper", "vg0-lv--a", "dm-1", 4096),
        ("mapper", "vg0-lv--a-real", "dm-2", 4096), ("mapper", "pmem0-x", "dm-3", 4096),
        ("mapper", "odd", "dm-4", 4096)]
    # Hidden layers, names that clash with a device and non-LVM names make no symlink.
    assert [(lk.vg, lk.lv, lk.target) for lk in links] == [("vg0", "lv-a", "../mapper/vg0-lv--a")]


def names(tree, parent=ROOT):
    return [n for n, _ in tree.listing(parent)]


def test_tree_keeps_inodes_through_rename_and_resize_and_reports_changes():
    t = Tree()
    c = t.update(*entries([base("pmem0", "u0")], [dm("a", 0), dm("vg-lv", 1, uuid="LVM-1")]))
    assert names(t) == ["mapper", "pmem0", "vg"] and names(t, t.mapper) == ["a", "vg-lv"]
    assert len(c.added) == 5 and not c.gone
    ino_a = t.child(t.mapper, "a").inode
    ino_vg = t.child(ROOT, "vg").inode

    c = t.update(*entries([base("pmem0", "u0")], [dm("b", 0, size=16), dm("vg-lv", 1, uuid="LVM-1")]))
    assert names(t, t.mapper) == ["b", "vg-lv"]
    assert t.child(t.mapper, "b").inode == ino_a and t.child(t.mapper, "b").size == 16 * 512
    assert c.moved == [(t.mapper, "a", ino_a)] and not c.gone and (t.mapper, "b", ino_a) in c.added
    assert c.resized == [ino_a]
    assert not t.update(*entries([base("pmem0", "u0")], [dm("b", 0, size=16), dm("vg-lv", 1, uuid="LVM-1")]))

    c = t.update(*entries([], [dm("b", 0, size=16)]))
    assert names(t) == ["mapper"] and t.child(ROOT, "vg") is None
    assert {g[1] for g in c.gone} == {"pmem0", "vg-lv", "vg"}
    assert ino_vg not in t.nodes      # nothing refers to it any more


def test_gone_node_lives_while_the_kernel_or_an_open_file_refers_to_it():
    t = Tree()
    t.update(*entries([base("pmem0", "u0")], []))
    node = t.child(ROOT, "pmem0")
    node.lookups, node.opens = 1, 1
    t.update([], [])
    assert node.gone and t.nodes[node.inode] is node and t.child(ROOT, "pmem0") is None
    node.opens = 0
    t.maybe_drop(node)
    assert node.inode in t.nodes
    node.lookups = 0
    t.maybe_drop(node)
    assert node.inode not in t.nodes
    # The same name for a new device (a new uuid) is a new inode.
    t.update(*entries([base("pmem0", "u1")], []))
    assert t.child(ROOT, "pmem0").inode != node.inode
