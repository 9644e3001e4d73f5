"""Adversarial review (fourth round) of the audit trail, read as an auditor and as an attacker
who can write the log file but does not hold the HMAC key.

- HOLE (fixed): `audit verify` parsed each line and hashed the JSON re-serialised, not the
  bytes on disk. A line with spaces added, members reordered, a number respelled (`-0.0` as
  `-0.00`) or a character written as a `\\u` escape verified as intact, HMAC key or not. An
  insider could so respell their own principal id (`"id":"\\u006dember"`) in every record:
  `grep member`, a SIEM's raw-text search and any byte-level comparison no longer find the
  records, and verify still said the log was as hubgate wrote it. verify now hashes the line's
  own bytes (the line without its leading `chain` member); a CRLF line end stays a line end.
- HOLE (fixed): a member's note text holding U+2028, U+2029 or U+0085 was written raw into
  the record (and in `input`). JSON allows that, but NDJSON readers that split lines there
  (Python's `str.splitlines`, as this suite's own `audit_records` did; Unicode-aware line
  readers) read the record as non-JSON halves and drop or fail on exactly the record of the
  request that carried it, while verify says intact. Every audit line now escapes the three.
- HOLE (fixed): `verify` told replicas' chains apart by the instance a file's first record
  names. A Deployment's pod gets a new name at every restart, so files of one chain began
  under different instances: leaving out a file between two restarts (or cutting a file's
  tail back to a restart) read as two replicas' chains, each intact, exit 0, though records
  were deleted from the middle of the log. Each chain now carries a sealed random id
  (`chain.id`), kept across restarts, and verify groups by it.
- HOLE (fixed): `audit verify` given a pipe (`/dev/stdin`, `<(zcat audit.ndjson.1.gz)`, the
  way an auditor checks a compressed rotated file) read it once to order the files, then
  checked what was left: nothing. `intact: 0 records`, exit 0, for a tampered log too. A file
  that is not a regular file is now refused (exit 2, "not a regular file").
- HOLE (fixed): `verify` placed each file in its chain by its first record, read from the
  file's first 16 MiB only. A file beginning with a larger record (an import's input with
  `server.max_body_bytes` raised) was put apart from its chain, and an honest log read as
  records deleted (BROKEN, exit 1). It reads as far as a restart looks for a record (512 MiB).
- Held: OCSF events beyond the allowed/denied/dry-run three of test_ocsf.py validate against
  the OCSF schema they declare: a 401 before authentication, a 404 without a route (activity
  0), a member's refused GetFindings (Read), a V2 update and a malformed body; the V1 and V2
  records of one finding name it alike (`resources[].uid` the finding's Id), V2 adding its
  account as `owner`, and the hubgate records' `findings` likewise.
- Held: a lone surrogate in a note text is refused (400) and its record still written and
  verified; control characters are escaped.

Noticed and left alone: removing records from the end of the newest file (or emptying every
file) still verifies intact, as README documents ("What the chain cannot show by itself"); a
file copied under another name (a second inode) reads as its records repeated (BROKEN), the
safe side. The fake Security Hub answers an honest V1 note within 300 s of a V2 comment on the
same finding with 503 STATE_SETTLING (the settle journal), outside this area.
"""

from __future__ import annotations

import json
import subprocess

import jsonschema

from helpers import HUBGATE_BIN, MEMBER_ACCOUNT, PRODUCT_ARN, audit_verify, hubgate_env, ident

KEY_ENV = {"HG_AUDIT4_KEY": "audit4-hmac-key"}


def note(text: str, fid: str = "f-own-high") -> dict:
    return {"FindingIdentifiers": [ident(fid)], "Note": {"Text": text, "UpdatedBy": "me"}}


def lines_of(path) -> list[str]:
    """The file's records split at "\\n" only, as hubgate writes them."""
    return path.read_bytes().decode().split("\n")[:-1]


def verified(*files, key: bool = False):
    out = audit_verify(*files, key_env="HG_AUDIT4_KEY" if key else None, env=KEY_ENV)
    return out.returncode, out.stdout + out.stderr


# ---------------------------------------------------------------------------
# verify: the bytes, not the JSON they parse to


def test_a_line_respelled_but_equal_as_json_is_reported_modified(make_fake, make_hubgate):
    fake = make_fake()
    hg = make_hubgate({"audit": {"hmac_key_env": "HG_AUDIT4_KEY"}}, fake=fake,
                      env={**hubgate_env(), **KEY_ENV})
    for text in ("first", "second"):
        assert hg.buf(note(text), who="member").status == 200
    hg.stop()
    first, second = lines_of(hg.audit_path)
    assert verified(hg.audit_path, key=True)[0] == 0
    assert '"id":"member"' in first and '"dry_run":false,"error":null,' in first
    edits = {
        # grep member, a SIEM's raw search: the record is no longer found
        "escaped id": first.replace('"id":"member"', '"id":"\\u006dember"'),
        "spaces": first.replace('"status":200', '"status": 200'),
        "reordered": first.replace('"dry_run":false,"error":null,',
                                   '"error":null,"dry_run":false,'),
        "space after the record": first + " ",
    }
    for name, edited in edits.items():
        assert edited != first, name
        assert json.loads(edited) == json.loads(first), name  # the same JSON to any parser
        path = hg.audit_path.with_name(f"edited-{name.replace(' ', '-')}")
        path.write_text(edited + "\n" + second + "\n")
        code, out = verified(path, key=True)
        assert code == 1 and f"{path.name}:1:" in out and "modified" in out, (name, out)
    crlf = hg.audit_path.with_name("crlf")
    crlf.write_bytes((first + "\r\n" + second + "\r\n").encode())
    assert verified(crlf, key=True)[0] == 0


def test_a_respelled_number_is_reported_modified(make_fake, make_hubgate):
    """A number the caller chose (an import's Severity.Product) respelled as the same double."""
    fake = make_fake()
    hg = make_hubgate({}, fake=fake)
    body = {"Findings": [{"SchemaVersion": "2018-10-08", "Id": "f-imp", "ProductArn": PRODUCT_ARN,
                          "GeneratorId": "g", "AwsAccountId": MEMBER_ACCOUNT, "Types": ["x"],
                          "CreatedAt": "2026-01-01T00:00:00Z",
                          "UpdatedAt": "2026-01-01T00:00:00Z",
                          "Severity": {"Label": "HIGH", "Product": 1.5}, "Title": "t",
                          "Description": "d",
                          "Resources": [{"Type": "Other", "Id": "r"}]}]}
    hg.send("POST", "/findings/import", body, who="member")
    hg.stop()
    (line,) = lines_of(hg.audit_path)
    assert '"Product":1.5' in line, line[:400]
    edited = line.replace('"Product":1.5', '"Product":1.50')
    assert json.loads(edited) == json.loads(line)
    hg.audit_path.write_text(edited + "\n")
    code, out = verified(hg.audit_path)
    assert code == 1 and "modified" in out, out


def test_a_log_given_through_a_pipe_is_refused_not_read_as_empty(make_fake, make_hubgate):
    """`hubgate audit verify /dev/stdin` (or `<(zcat audit.ndjson.1.gz)`): the pipe's lines went
    to the read that orders the files, the check read nothing: `intact: 0 records`, exit 0,
    for a tampered log too."""
    fake = make_fake()
    hg = make_hubgate({}, fake=fake)
    assert hg.buf({"FindingIdentifiers": [ident("f-own-high")],
                   "Workflow": {"Status": "SUPPRESSED"}}, who="member").status == 403
    hg.stop()
    tampered = hg.audit_path.read_bytes().replace(b'"allow":false', b'"allow":true')
    hg.audit_path.write_bytes(tampered)
    assert verified(hg.audit_path)[0] == 1
    out = subprocess.run([str(HUBGATE_BIN), "audit", "verify", "/dev/stdin"], input=tampered,
                         capture_output=True, timeout=30, env=hubgate_env())
    assert out.returncode == 2 and b"not a regular file" in out.stderr, out
    # stdin redirected from the file itself is the file: verified as such
    with hg.audit_path.open("rb") as f:
        out = subprocess.run([str(HUBGATE_BIN), "audit", "verify", "/dev/stdin"], stdin=f,
                             capture_output=True, timeout=30, env=hubgate_env())
    assert out.returncode == 1 and b"modified" in out.stdout, out


# ---------------------------------------------------------------------------
# one record, one line, for every reader


def test_a_note_with_line_separators_keeps_its_record_on_one_line(make_fake, make_hubgate):
    fake = make_fake()
    hg = make_hubgate({}, fake=fake)
    texts = ["a\u2028b", "c\u2029d", "e\u0085f", "ctl\x01\x1f\x7f"]
    ids = []
    for text in texts:
        resp = hg.buf(note(text), who="member")
        assert resp.status == 200, resp.text
        ids.append(resp.headers["x-hubgate-decision-id"])
    # a lone surrogate is not JSON text: refused, and still recorded
    surrogate = json.dumps(note("x")).replace('"x"', '"x\\ud800y"')
    refused = hg.buf(surrogate, who="member")
    assert refused.status == 400, refused.text
    ids.append(refused.headers["x-amzn-requestid"])
    hg.stop()
    text = hg.audit_path.read_text()
    # Python's splitlines (and Unicode line readers) end lines at U+0085, U+2028, U+2029
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["decision_id"] for r in records] == ids
    assert [r["update"]["note"]["text"] for r in records[:4]] == texts
    assert [r["input"]["request"]["body"]["Note"]["Text"] for r in records[:4]] == texts
    assert not any(c in text for c in "\u2028\u2029\u0085\x01\x1f")
    code, out = verified(hg.audit_path)
    assert code == 0 and "intact: 5 records" in out, out


# ---------------------------------------------------------------------------
# one chain across restarts under new pod names


def test_a_file_left_out_between_restarts_under_new_pod_names_is_found(make_fake, make_hubgate):
    fake = make_fake()
    hg = None
    # every record in a file of its own: files begin under pod-a, pod-a, pod-b, pod-b, ...
    for pod in ("pod-a", "pod-b", "pod-c"):
        env = {**hubgate_env(), "HUBGATE_INSTANCE_ID": pod}
        if hg is None:
            hg = make_hubgate({"audit": {"max_bytes": 1, "max_files": 10,
                                         "include_input": False}}, fake=fake, env=env)
        else:
            hg.env = env
            hg.start()
        for i in range(2):
            assert hg.buf(note(f"{pod}-{i}"), who="member").status == 200
        hg.stop()
    files = hg.audit_files()
    seqs = [[json.loads(line)["chain"]["seq"] for line in lines_of(f)] for f in files]
    assert seqs == [[1], [2], [3], [4], [5], [6]], seqs
    code, out = verified(*files)
    assert code == 0 and "intact: 6 records, sequence 1 to 6" in out, out
    # record 4 (pod-b's last) deleted: pod-c's first file now follows pod-b's first
    code, out = verified(*files[:3], *files[4:])
    assert code == 1 and "sequence number 5 follows 3" in out, out
    # the tail of pod-a cut back: the same, with the files given newest first
    code, out = verified(*reversed([files[0], *files[2:]]))
    assert code == 1 and "sequence number 3 follows 1" in out, out


# ---------------------------------------------------------------------------
# OCSF: the kinds of events test_ocsf.py does not validate


def test_ocsf_events_of_every_kind_validate_and_name_v1_and_v2_findings_alike(
        make_fake, make_hubgate):
    from test_ocsf import schema_for

    fake = make_fake()
    hubgates = {fmt: make_hubgate({"audit": {"format": fmt}}, fake=fake)
                for fmt in ("ocsf", "hubgate")}
    v2 = {"FindingIdentifiers": [{"CloudAccountUid": MEMBER_ACCOUNT,
                                  "FindingInfoUid": "f-own-high",
                                  "MetadataProductUid": PRODUCT_ARN}], "Comment": "c"}
    for hg in hubgates.values():
        calls = [
            (hg.buf(note("v1"), who=None), 401),
            (hg.send("GET", "/nope", who="member"), 404),
            (hg.send("POST", "/findings", {}, who="member"), 403),
            (hg.buf(b"{", who="member"), 400),
            (hg.buf(note("v1"), who="member"), 200),
            (hg.send("PATCH", "/findingsv2/batchupdatev2", v2, who="member"), 200),
        ]
        assert [r.status for r, _ in calls] == [s for _, s in calls], [r.text for r, _ in calls]
        hg.stop()
    events = [json.loads(line) for line in lines_of(hubgates["ocsf"].audit_path)]
    for event in events:
        body = {k: v for k, v in event.items() if k != "chain"}
        errors = [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in
                  jsonschema.Draft202012Validator(schema_for(event)).iter_errors(body)]
        assert not errors, (event["api"], errors)
    assert [(e["activity_id"], e["api"]["response"]["code"], e["disposition_id"])
            for e in events] == [(3, 401, 2), (0, 404, 2), (2, 403, 2), (3, 400, 2),
                                 (3, 200, 1), (3, 200, 1)]
    v1, v2e = events[4]["resources"], events[5]["resources"]
    assert [r["uid"] for r in v1] == [r["uid"] for r in v2e] == ["f-own-high"]
    assert v1[0]["data"] == v2e[0]["data"] == {"ProductArn": PRODUCT_ARN}
    assert "owner" not in v1[0] and v2e[0]["owner"]["account"]["uid"] == MEMBER_ACCOUNT
    records = [json.loads(line) for line in lines_of(hubgates["hubgate"].audit_path)]
    assert records[4]["findings"] == [{"Ids": ["f-own-high"], "ProductArn": PRODUCT_ARN}]
    assert records[5]["findings"] == [{"AccountId": MEMBER_ACCOUNT, "Ids": ["f-own-high"],
                                       "ProductArn": PRODUCT_ARN}]
    for hg in hubgates.values():
        assert verified(hg.audit_path)[0] == 0


# ---------------------------------------------------------------------------
# a large record first in a file


def test_a_file_whose_first_record_passes_16_mib_stays_in_its_chain(tmp_path):
    """An import's record (its input with server.max_body_bytes raised: up to 100 findings of
    240 KB) can pass 16 MiB. `verify` read only a file's first 16 MiB to place it in its
    chain: such a file beginning with such a record was put apart, and the honest log read as
    records deleted (BROKEN, exit 1). Sealed here as README's "The hash chain" describes."""
    import hashlib

    prev, lines = "0" * 64, []
    records = [{"decision_id": "d1"}, {"decision_id": "big", "input": "x" * (17 << 20)},
               {"decision_id": "d3"}, {"decision_id": "d4"}]
    for seq, record in enumerate(records, 1):
        body = json.dumps(record, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(f"{prev}\n{seq}\ninstance:pod-a\n{body}".encode()).hexdigest()
        chain = json.dumps({"hash": digest, "instance": "pod-a", "prev": prev, "seq": seq},
                           separators=(",", ":"))
        lines.append('{"chain":' + chain + "," + body[1:] + "\n")
        prev = digest
    files = [tmp_path / "audit.ndjson.2", tmp_path / "audit.ndjson.1", tmp_path / "audit.ndjson"]
    for path, part in zip(files, (lines[:1], lines[1:3], lines[3:])):
        path.write_text("".join(part))
    code, out = verified(*files)
    assert code == 0 and "intact: 4 records, sequence 1 to 4" in out, out
