"""The release build with profile-guided optimisation (deploy/build-release.sh): the committed
profile is one this toolchain reads, the script builds with it and falls back to a plain build
when the build with it fails, and the container image builds that way. (The release build
itself takes 8 to 20 minutes on 2 cores and is not run here; benches/load measures what it
gives.)"""

import lzma
import os
import shutil
import stat
import subprocess

import pytest

from helpers import REPO

PROFILE = REPO / "deploy" / "pgo" / "hubgate.profdata.xz"


def test_the_profile_is_an_indexed_profile_this_rustc_reads(tmp_path):
    data = lzma.decompress(PROFILE.read_bytes())
    assert data[:8] == b"\xfflprofi\x81", data[:8]
    profile = tmp_path / "hubgate.profdata"
    profile.write_bytes(data)
    src = tmp_path / "t.rs"
    src.write_text("fn main() {}\n")
    # rustc reads the whole profile for any crate it optimises with it: one it cannot read (a
    # newer LLVM wrote it, or it is cut) fails the compile or draws a warning about it.
    def compile_with_it():
        return subprocess.run(["rustc", "-O", f"-Cprofile-use={profile}", str(src),
                               "-o", str(tmp_path / "t")],
                              capture_output=True, text=True, timeout=120)

    ok = compile_with_it()
    assert ok.returncode == 0 and "profile" not in ok.stderr.lower(), ok.stderr
    profile.write_bytes(data[: len(data) // 3])
    cut = compile_with_it()
    assert cut.returncode != 0 or "profile" in cut.stderr.lower(), \
        "a cut profile was read without a word: the check above proves nothing"


def fake_cargo(tmp_path, fail_with_profile: bool):
    """A `cargo` first on PATH that records each call (RUSTFLAGS and the arguments) and fails
    when asked to build with a profile, as a toolchain that cannot read it does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    cargo = bin_dir / "cargo"
    cargo.write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%s|%s\\n" "${{RUSTFLAGS:-}}" "$*" >> {log}\n'
        + ('case "${RUSTFLAGS:-}" in *profile-use*) echo "cannot read it" >&2; exit 101;; esac\n'
           if fail_with_profile else "")
        + "exit 0\n")
    cargo.chmod(cargo.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("RUSTFLAGS", None)
    return env, log


@pytest.mark.parametrize("fails", [False, True], ids=["reads-it", "cannot-read-it"])
def test_build_release_builds_with_the_profile_or_says_why_not(tmp_path, fails):
    # A copy of the repository's script and profile, so that target/pgo is the copy's.
    repo = tmp_path / "repo"
    (repo / "deploy" / "pgo").mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "build-release.sh", repo / "deploy")
    shutil.copy(PROFILE, repo / "deploy" / "pgo")
    env, log = fake_cargo(tmp_path, fails)
    run = subprocess.run(["bash", str(repo / "deploy" / "build-release.sh"), "--bin", "hubgate"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    calls = log.read_text().splitlines()
    written = repo / "target" / "pgo" / "hubgate.profdata"
    assert written.read_bytes() == lzma.decompress(PROFILE.read_bytes())
    flags, args = calls[0].split("|")
    assert f"-Cprofile-use={written}" in flags.split(), flags
    assert args == "build --release --locked --bin hubgate"
    if fails:
        assert len(calls) == 2, calls
        assert calls[1] == "|build --release --locked --bin hubgate", calls
        assert "building without it" in run.stderr
    else:
        assert len(calls) == 1, calls


def test_the_image_builds_with_the_profile():
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert "bash deploy/build-release.sh" in dockerfile
    assert "COPY deploy/pgo ./deploy/pgo" in dockerfile
    assert "cargo build --release" not in dockerfile.replace("# ", "")
