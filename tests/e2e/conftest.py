"""Fixtures for hubgate's end-to-end tests: a fake Security Hub and real hubgate processes."""

from __future__ import annotations

import pytest

from helpers import SEED, FakeUpstream, Hubgate


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the stderr of every hubgate the test used to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for hg in getattr(item, "_hubgates", []):
            tail = "\n".join(hg.stderr_text().splitlines()[-80:])
            report.sections.append((f"hubgate stderr ({hg.workdir.name})", tail))


def pytest_configure(config):
    config.addinivalue_line("markers", "session_last: run after every other test")


def pytest_collection_modifyitems(items):
    """Tests marked session_last (checks over the whole session's files) run at the end."""
    items.sort(key=lambda item: item.get_closest_marker("session_last") is not None)


def _track(request, hg: Hubgate):
    request.node.__dict__.setdefault("_hubgates", []).append(hg)
    return hg


@pytest.fixture(scope="session")
def fake(tmp_path_factory):
    up = FakeUpstream(tmp_path_factory.mktemp("fake") / "fake.log").start()
    yield up
    up.stop()


@pytest.fixture(scope="session")
def _session_hubgate(tmp_path_factory, fake):
    # Tests reset the shared fake between them, which to this long-lived hubgate is another
    # writer undoing its writes at once. Its settle journal rightly does not trust that for
    # settle_ms (see test_settle.py), so the shared instance runs without one; hubgates a
    # test starts itself keep the default.
    hg = Hubgate(tmp_path_factory.mktemp("hubgate"), fake.endpoint, fake=fake,
                 overrides={"enrichment": {"settle_ms": 0}}).start()
    yield hg
    hg.stop()


@pytest.fixture
def seeded_fake(fake):
    """The shared fake, reset (findings, recorded requests, config) and seeded with SEED."""
    fake.reset()
    fake.add_findings(SEED)
    return fake


@pytest.fixture
def hubgate(request, _session_hubgate, seeded_fake):
    """The shared hubgate (default config) in front of a freshly reset and seeded fake."""
    hg = _track(request, _session_hubgate)
    code = hg.proc.poll()
    if code is not None:
        tail = "\n".join(hg.stderr_text().splitlines()[-30:])
        pytest.fail(f"the shared hubgate is no longer running (exit code {code}; negative = "
                    f"killed by that signal); its stderr ends with:\n{tail}")
    return hg


@pytest.fixture
def make_hubgate(request, tmp_path_factory):
    """Start extra hubgate instances with config overrides; all are stopped at teardown.

    make_hubgate(overrides, fake=None, upstream_endpoint=None)"""
    started = []

    def make(overrides: dict | None = None, fake: FakeUpstream | None = None,
             upstream_endpoint: str | None = None, start: bool = True, **hubgate_kw) -> Hubgate:
        """hubgate_kw: Hubgate fields (env, popen_kw); start=False returns it unstarted."""
        endpoint = upstream_endpoint or (fake.endpoint if fake else None)
        assert endpoint, "give a fake or an upstream_endpoint"
        hg = Hubgate(tmp_path_factory.mktemp("hubgate"), endpoint, overrides or {}, fake=fake,
                     **hubgate_kw)
        started.append(hg)
        _track(request, hg)
        return hg.start() if start else hg

    yield make
    for hg in started:
        hg.stop()


@pytest.fixture
def make_fake(tmp_path_factory):
    """Start extra fake upstreams (seeded like the shared one); stopped at teardown."""
    started = []

    def make(**kw) -> FakeUpstream:
        up = FakeUpstream(tmp_path_factory.mktemp("fake") / "fake.log", **kw).start()
        started.append(up)
        up.add_findings(SEED)
        return up

    yield make
    for up in started:
        up.stop()
