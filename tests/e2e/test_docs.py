"""The documents tell the truth: sample outputs and counts quoted in them are what the binary
prints now, and they point at nothing a reader does not have."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from helpers import HUBGATE_BIN, REPO, hubgate_env

README = REPO / "README.md"
HASH = re.compile(r"sha256:[0-9a-f]{64}")


def run(*args, cwd=REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in hubgate_env().items() if k != "HUBGATE_CONFIG"}
    return subprocess.run([str(HUBGATE_BIN), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def console_block(text: str, command: str) -> list[str]:
    """The output lines under `$ command` in a ```console block."""
    m = re.search(r"```console\n(?:\$ [^\n]*\n)*?\$ " + re.escape(command) + r"\n(.*?)```",
                  text, re.S)
    assert m, f"README has no console block for `{command}`"
    return [line for line in m.group(1).splitlines() if not line.startswith("$ ")]


def test_readme_check_sample_is_what_check_prints():
    r = run("check")
    assert r.returncode == 0, r.stderr
    sample = console_block(README.read_text(), "hubgate check")
    assert [HASH.sub("sha256:…", line) for line in sample] == \
        [HASH.sub("sha256:…", line) for line in r.stdout.splitlines()]


def test_readme_typo_sample_is_what_check_prints(tmp_path):
    typo = tmp_path / "typo.toml"
    typo.write_text((REPO / "config" / "hubgate.toml").read_text()
                    .replace("\nlisten =", "\nlisen =", 1))
    r = run("check", "--config", str(typo))
    assert r.returncode == 2
    sample = console_block(README.read_text(), "hubgate check --config /tmp/typo.toml")
    assert sample == r.stderr.replace(str(typo), "/tmp/typo.toml").splitlines()


def test_readme_caution_sample_is_what_check_prints(tmp_path):
    """A valid configuration that weakens a guarantee is still valid (exit 0), with the
    caution README shows on stderr."""
    short = tmp_path / "short-settle.toml"
    short.write_text((REPO / "config" / "hubgate.toml").read_text()
                     .replace("\nsettle_ms = 300000", "\nsettle_ms = 5000", 1)
                     .replace('callers = "', f'callers = "{REPO}/config/', 1)
                     .replace('dir = "', f'dir = "{REPO}/config/', 1))
    r = run("check", "--config", str(short))
    assert r.returncode == 0, r.stderr
    sample = console_block(README.read_text(), "hubgate check --config /tmp/short-settle.toml")
    assert sample == r.stderr.splitlines()


def test_quoted_test_count_is_the_policy_test_count():
    r = run("test", "policies")
    assert r.returncode == 0, r.stdout
    actual = re.search(r"^(\d+) passed, 0 failed$", r.stdout, re.M).group(1)
    quoted = re.findall(r"(\d+) passed, \d+ failed", README.read_text())
    assert quoted and set(quoted) == {actual}, (quoted, actual)


def test_quoted_operation_counts_are_the_route_table():
    r = run("check")
    m = re.search(r"routes: (\d+) operations: (\d+) under policy .*, (\d+) forwarded, "
                  r"(\d+) refused", r.stdout)
    assert m, r.stdout
    refused = m.group(4)
    for doc in [REPO / "deploy" / "aws" / "README.md", README]:
        for n in re.findall(r"(\d+) blocked operations", doc.read_text()):
            assert n == refused, f"{doc.relative_to(REPO)} says {n} blocked operations, " \
                                 f"hubgate check says {refused}"


def documents():
    for pattern in ["*.md", "**/*.md", "deploy/**/*", "config/**/*"]:
        for path in REPO.glob(pattern):
            rel = path.relative_to(REPO).parts
            # benches/load/results*.md record the machine a measurement ran on, on purpose;
            # vendor/ holds other projects' documents as published, but for our notes on them.
            if path.is_file() and rel[0] not in {"target", ".venv", ".git", "fuzz"} \
                    and not (rel[:2] == ("benches", "load") and path.name.startswith("results")) \
                    and not (rel[0] == "vendor" and path.name != "PATCHES.md"):
                yield path


@pytest.mark.parametrize("pattern", [r"/work/", r"/home/\w+", r"research[/ ]§?",
                                     r"\bthe brief\b", r"brief's"])
def test_documents_cite_nothing_readers_do_not_have(pattern):
    found = [f"{p.relative_to(REPO)}:{n}" for p in set(documents())
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
             if re.search(pattern, line, re.I)]
    assert not found, found


@pytest.mark.parametrize("doc", ["README.md", "policies/README.md",
                                 "deploy/kubernetes/README.md",
                                 "deploy/kubernetes/deployment.yaml"])
def test_no_document_says_a_failed_reload_makes_readyz_503(doc):
    """The binary answers 200 with "stale": true (test_first_minutes checks it)."""
    text = re.sub(r"\s+", " ", (REPO / doc).read_text())
    for sentence in re.split(r"(?<=[.;:])\s", text):
        if "reload" in sentence and "503" in sentence and "readyz" in sentence.lower():
            assert "stale" in sentence or "200" in sentence, sentence


def test_kubernetes_readme_names_every_schema_under_policy():
    text = (REPO / "deploy" / "kubernetes" / "README.md").read_text()
    for schema in (REPO / "policies" / "schemas").glob("*.json"):
        assert schema.name in text, schema.name


def test_no_document_says_imports_are_blocked():
    for path in documents():
        text = re.sub(r"\s+", " ", path.read_text(errors="replace"))
        assert not re.search(r"BatchImportFindings[^.]{0,80}hubgate blocks it", text), path
        assert "only the allowed findings is not available" not in text, path
        assert "only BatchUpdateFindings reaches the polic" not in text, path


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation but `-` and
    `_` dropped, spaces as `-`, a repeated heading numbered from 1. Headings inside code blocks
    (a shell comment in a ```sh block) are not headings."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"#{1,6} (.+)", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_relative_links_point_at_files_and_headings_that_exist():
    """A link into the repository names a file that is there and, with `#anchor`, a heading
    of that file: moving a section (as the performance history was) must not leave a reader
    at a dead end."""
    broken = []
    for doc in sorted(set(documents())):
        if doc.suffix != ".md":
            continue
        text = doc.read_text(errors="replace")
        outside_code = re.sub(r"```.*?```", "", text, flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", outside_code):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            where = f"{doc.relative_to(REPO)}: ({target})"
            if not file.exists():
                broken.append(f"{where}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in github_anchors(file.read_text()):
                broken.append(f"{where}: no such heading")
    assert not broken, "\n".join(broken)
