"""Adversarial review (hot reload as Kubernetes and operators do it, second pass).

Every mount here is laid out as a Kubernetes ConfigMap or Secret volume is: each visible name
is a symlink `name -> ..data/name`, `..data` a symlink to a timestamped directory, and an
update writes a new directory and swaps `..data` over to it with one rename.

- HOLE (fixed): a policy reload that ran while `..data` was swapped compiled a set no one
  wrote: the files it had read before the swap came from the old version and the rest from
  the new one. A rule moved from one file to another by the update (a refactor) was in
  neither half, so the set in force had no such rule, and a member's request it forbids was
  forwarded (and audited under the mixed set's revision) until the next reload: the next
  watch check, or with `watch_interval_ms = 0` (SIGHUP from a reloader sidecar) the next
  signal. The policy directory is now checked before and after its
  files are read (names, and the identity of each file: device, inode, size, times); a read
  that saw it change is read again, whole (the test holds the first file's read open with a
  FIFO to land the swap inside the reload).
- HOLE (fixed): the file watch compared names, sizes and modification times only. A file
  replaced by one of the same size and the same mtime (a rotated secret_file: AWS secrets
  all have one length; mtimes normalized by Nix, a reproducible build, `cp -p`, `tar x` or
  rsync -a, or two writes within the file system's timestamp tick) was never seen, so a
  revoked secret went on signing requests until someone sent SIGHUP. The watch now compares
  each file's device, inode and change time (which no tool can set) too.
- Held (read in the code, not repeated here): one request takes one policy set
  (`load_full` once in `decide`) and its audit record names that set's revision; the
  callers are asked again after a reload that lands during the body read or the quota wait
  (test_adversarial_identity.py); a half-written .rego fails the reload and keeps the old set
  with `stale` on /readyz (test_reload.py); a storm of signals runs at most one reload after
  the running one (README, `ask_reload`); a certificate and key that do not match are refused
  by rustls' `with_single_cert`, keeping the previous pair.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from helpers import MEMBER, POLICY_DIR, Creds, ident, wait_until

NOTE = {"FindingIdentifiers": [ident("f-own-high")], "Note": {"Text": "t", "UpdatedBy": "u"}}

# The rule an update moves from zz.rego to aa.rego.
RULE = """package hubgate

deny contains {"msg": "members may not write notes today", "finding": null} if {
\tinput.principal.role == "member"
\t"Note.Text" in input.update.fields
}
"""
EMPTY = "package hubgate\n"


def k8s_version(mount: Path, name: str, files: dict[str, str | None],
                copy_from: Path | None = None) -> Path:
    """A timestamped directory of a ConfigMap volume; a None content is made a FIFO."""
    d = mount / name
    if copy_from is not None:
        shutil.copytree(copy_from, d, ignore=shutil.ignore_patterns("*_test.rego", "*.md"))
    else:
        d.mkdir()
    for rel, text in files.items():
        if text is None:
            os.mkfifo(d / rel)
        else:
            (d / rel).write_text(text)
    return d


def k8s_swap(mount: Path, version: Path):
    """kubelet's AtomicWriter: a new ..data link renamed over the old one; visible names are
    links into ..data, made once."""
    tmp = mount / "..data_tmp"
    os.symlink(version.name, tmp)
    os.replace(tmp, mount / "..data")
    for entry in version.iterdir():
        link = mount / entry.name
        if not link.is_symlink():
            os.symlink(Path("..data") / entry.name, link)


def revision(hg) -> str:
    return hg.admin("/readyz").json()["checks"]["policy"]["revision"]


def test_a_policy_reload_across_a_configmap_swap_never_compiles_a_mix(make_hubgate, seeded_fake,
                                                                       tmp_path):
    mount = tmp_path / "policies"
    mount.mkdir()
    v1 = k8s_version(mount, "..2026_01_01_v1", {"aa.rego": EMPTY, "zz.rego": RULE},
                     copy_from=POLICY_DIR)
    k8s_swap(mount, v1)
    hg = make_hubgate({"policy": {"dir": str(mount), "watch_interval_ms": 0}}, fake=seeded_fake)
    assert hg.buf(NOTE, who="member").status == 403
    first = revision(hg)

    # The same set, whose first file is read through a FIFO: the reload blocks on it.
    held = k8s_version(mount, "..2026_01_01_v1b", {"aa.rego": None, "zz.rego": RULE},
                       copy_from=POLICY_DIR)
    k8s_swap(mount, held)
    # The update: the rule moves from zz.rego to aa.rego.
    v2 = k8s_version(mount, "..2026_01_02_v2", {"aa.rego": RULE, "zz.rego": EMPTY},
                     copy_from=POLICY_DIR)
    hg.proc.send_signal(signal.SIGHUP)

    fifo = held / "aa.rego"
    fd = None
    deadline = time.monotonic() + 10
    while fd is None:  # a FIFO opened for writing without a reader fails with ENXIO
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            assert time.monotonic() < deadline, "the reload never opened aa.rego"
            time.sleep(0.01)
    # The reload has aa.rego (the old one) open: the swap lands in the middle of its read.
    k8s_swap(mount, v2)
    os.set_blocking(fd, True)
    os.write(fd, EMPTY.encode())
    os.close(fd)
    shutil.rmtree(held)  # kubelet deletes the old version after the swap

    wait_until(lambda: revision(hg) != first
               or hg.admin("/readyz").json()["checks"]["policy"]["stale"], 10,
               "the reload to finish")
    resp = hg.buf(NOTE, who="member")
    assert resp.status == 403, (
        "the set in force was compiled from the old aa.rego and the new zz.rego, and has the "
        f"moved rule in neither: {resp.status} {resp.text}")
    # A reload now (nothing changes) keeps the same set: it was the new version, whole.
    now = revision(hg)
    hg.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert revision(hg) == now


def test_a_secret_rotated_with_the_same_size_and_mtime_is_seen(make_hubgate, seeded_fake):
    old = "A" * 40
    new = "B" * 40  # AWS secret access keys are all 40 characters long
    callers = f"""\
[[caller]]
id = "member"
account_id = "222222222222"
role = "member"
access_key_id = "{MEMBER.access_key}"
secret_file = "secrets/member.secret"
"""
    hg = make_hubgate({"policy": {"watch_interval_ms": 100}}, fake=seeded_fake, start=False,
                      callers_toml=callers)
    mount = hg.workdir / "secrets"
    mount.mkdir(parents=True)
    v1 = k8s_version(mount, "..2026_01_01_v1", {"member.secret": old})
    k8s_swap(mount, v1)
    hg.start()
    assert hg.buf(NOTE, creds=Creds(MEMBER.access_key, old)).status == 200

    # The rotation: same length, and the modification time the deploy tool gave the old one.
    v2 = k8s_version(mount, "..2026_01_02_v2", {"member.secret": new})
    st = os.stat(v1 / "member.secret")
    os.utime(v2 / "member.secret", ns=(st.st_atime_ns, st.st_mtime_ns))
    k8s_swap(mount, v2)
    shutil.rmtree(v1)

    # 100 ms checks and 250 ms of settling: a few seconds is plenty.
    wait_until(lambda: hg.buf(NOTE, creds=Creds(MEMBER.access_key, new)).status == 200, 4,
               "the rotated secret to be taken")
    resp = hg.buf(NOTE, creds=Creds(MEMBER.access_key, old))
    assert resp.status == 401, f"the revoked secret still signs: {resp.status} {resp.text}"
