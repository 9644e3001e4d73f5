"""The release build with profile-guided optimisation (deploy/build-release.sh): the committed
profile is one this toolchain reads and was recorded against this dependency tree, the script
builds with it, says when it is stale and falls back to a plain build when the build with it
fails, and the container image builds that way. (The release build
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


DEPS = REPO / "deploy" / "pgo" / "hubgate.profdata.deps"


def recorded_deps(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def test_the_profile_was_recorded_against_this_dependency_tree():
    # The profile names functions by their symbols, and cargo's hash in every hubgate symbol
    # changes with the dependency tree: a new dependency (stop 56's httparse) made the whole
    # profile match nothing, silently, and the cold update ran 11.6% more instructions.
    current = subprocess.run(["bash", str(REPO / "deploy" / "pgo" / "deps.sh")],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    assert "[crates]" in current and "\nhubgate v" in current and "\nhyper v1." in current, \
        current[:500]
    assert recorded_deps(DEPS.read_text()) == current.rstrip("\n"), (
        "deploy/pgo/hubgate.profdata.xz was recorded against another dependency tree or "
        "release profile: run benches/load/pgo-train.sh (diff deploy/pgo/hubgate.profdata.deps "
        "against the output of deploy/pgo/deps.sh)")


TREE = "hubgate v0.1.0 (/somewhere/else) \nhyper v1.0.0 client,http1 (*)\n"


def fake_cargo(tmp_path, fail_with_profile: bool):
    """A `cargo` first on PATH that records each build (RUSTFLAGS and the arguments), fails
    when asked to build with a profile, as a toolchain that cannot read it does, and answers
    `cargo tree` with TREE."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    cargo = bin_dir / "cargo"
    (tmp_path / "tree").write_text(TREE)
    cargo.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = tree ]; then cat {tmp_path / "tree"}; exit 0; fi\n'
        f'printf "%s|%s\\n" "${{RUSTFLAGS:-}}" "$*" >> {log}\n'
        + ('case "${RUSTFLAGS:-}" in *profile-use*) echo "cannot read it" >&2; exit 101;; esac\n'
           if fail_with_profile else "")
        + "exit 0\n")
    cargo.chmod(cargo.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("RUSTFLAGS", None)
    return env, log


def copy_of_the_scripts(tmp_path, recorded_tree: str):
    """The repository's build script, profile and deps.sh in a new folder (so that target/pgo
    is the copy's), with a Cargo.toml and a recorded dependency tree of `recorded_tree`."""
    repo = tmp_path / "repo"
    (repo / "deploy" / "pgo").mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "build-release.sh", repo / "deploy")
    shutil.copy(PROFILE, repo / "deploy" / "pgo")
    shutil.copy(REPO / "deploy" / "pgo" / "deps.sh", repo / "deploy" / "pgo")
    (repo / "Cargo.toml").write_text(
        '[package]\nname = "hubgate"\n\n[profile.release]\n# why\nlto = "fat"\n\n'
        '[patch.crates-io]\n')
    (repo / "deploy" / "pgo" / "hubgate.profdata.deps").write_text(
        "# a comment, not compared\n[profile.release]\nlto = \"fat\"\n[crates]\n"
        + recorded_tree)
    return repo


@pytest.mark.parametrize("recorded,stale", [
    ("hubgate v0.1.0\nhyper v1.0.0 client,http1\n", False),
    ("hubgate v0.1.0\nhttparse v1.10.1 default,std\nhyper v1.0.0 client,http1\n", True),
    ("hubgate v0.1.0\nhyper v1.0.0 client,http1,http2\n", True),
], ids=["same-tree", "another-crate", "other-features"])
def test_build_release_says_when_the_profile_is_for_another_dependency_tree(
        tmp_path, recorded, stale):
    repo = copy_of_the_scripts(tmp_path, recorded)
    env, log = fake_cargo(tmp_path, False)
    run = subprocess.run(["bash", str(repo / "deploy" / "build-release.sh"), "--bin", "hubgate"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    # Said, and built with the profile all the same: it still matches the other crates.
    assert ("recorded against another dependency tree" in run.stderr) == stale, run.stderr
    flags, args = log.read_text().splitlines()[0].split("|")
    assert "-Cprofile-use=" in flags and args == "build --release --locked --bin hubgate"


@pytest.mark.parametrize("fails", [False, True], ids=["reads-it", "cannot-read-it"])
def test_build_release_builds_with_the_profile_or_says_why_not(tmp_path, fails):
    repo = copy_of_the_scripts(tmp_path, "hubgate v0.1.0\nhyper v1.0.0 client,http1\n")
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
    assert "another dependency tree" not in run.stderr
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
