"""The module-cycle check (tests/tools/module_cycles.py) on hubgate's src/ and on small fake
trees, so a checker that stopped seeing edges could not pass the real tree by accident."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("module_cycles", REPO / "tests" / "tools" / "module_cycles.py")
module_cycles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(module_cycles)


def tree(root: Path, files: dict[str, str]) -> Path:
    src = root / "src"
    for name, text in files.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return src


def test_hubgate_modules_have_no_cycle(capsys):
    assert module_cycles.main([str(REPO / "src")]) == 0, capsys.readouterr().err


def test_the_bottom_modules_import_nothing_from_the_crate():
    edges = module_cycles.graph(REPO / "src")
    for bottom in ["finding", "metrics", "quoted"]:
        assert edges[bottom] == set(), (bottom, edges[bottom])
    # the head checks and the JSON readers quote a caller's text as every message does
    for reader in ["framing", "validate"]:
        assert edges[reader] == {"quoted"}, (reader, edges[reader])
    assert "server" not in edges["proxy"]
    assert "envelope" not in edges["routes"]


def test_a_cycle_through_a_submodule_and_a_use_group_is_reported(tmp_path, capsys):
    src = tree(tmp_path, {
        "lib.rs": "pub mod a;\npub mod b;\npub mod c;\n",
        "a.rs": "use crate::b::Thing;\n",
        "b.rs": "mod inner;\n",
        # the back edge hides in a submodule, inside a nested use group
        "b/inner.rs": "use crate::{c, a::{Other, More}};\n",
        "c.rs": "",
    })
    assert module_cycles.graph(src) == {"a": {"b"}, "b": {"a", "c"}, "c": set()}
    assert module_cycles.main([str(src)]) == 1
    assert "module cycle: a -> b -> a" in capsys.readouterr().err


def test_a_longer_cycle_is_printed_whole(tmp_path, capsys):
    src = tree(tmp_path, {
        "a.rs": "fn f() { crate::b::g() }\n",
        "b.rs": "fn g() -> crate::c::T { todo!() }\n",
        "c.rs": "pub struct T(crate::a::U);\n",
    })
    assert module_cycles.main([str(src)]) == 1
    assert "module cycle: a -> b -> c -> a" in capsys.readouterr().err


def test_comments_strings_super_and_the_crate_root_are_not_edges(tmp_path):
    src = tree(tmp_path, {
        "lib.rs": "pub mod a;\npub mod b;\nuse crate::a::X;\n",
        "main.rs": "use crate::b::Y;\n",
        "a.rs": "mod sub;\n// crate::b::X in a comment\n/* crate::b::Y */\n"
                "const S: &str = \"crate::b::Z\";\nconst R: &str = r#\"crate::b\"#;\n",
        "a/sub.rs": "use super::X;\n",
        "b.rs": "use crate::a::X;\n",
    })
    assert module_cycles.graph(src) == {"a": set(), "b": {"a"}}
    assert module_cycles.cycles(module_cycles.graph(src)) == []


def test_contributing_diagram_is_the_module_graph():
    """CONTRIBUTING.md's layer diagram: every top-level module on one row, importing only from
    rows below its own."""
    text = (REPO / "CONTRIBUTING.md").read_text()
    block = text.split("## The layers", 1)[1].split("```", 2)[1]
    edges = module_cycles.graph(REPO / "src")
    rows = []
    for line in block.splitlines():
        # a row lists its modules first, then describes them
        names = []
        for word in line.split():
            if word not in edges:
                break
            names.append(word)
        if names:
            rows.append(names)
    listed = [m for row in rows for m in row]
    assert sorted(listed) == sorted(edges), "every module is on exactly one row"
    level = {m: len(rows) - i for i, row in enumerate(rows) for m in row}
    for module, imports in edges.items():
        for dep in imports:
            assert level[dep] < level[module], f"{module} (row {level[module]}) imports {dep} " \
                                               f"(row {level[dep]})"
