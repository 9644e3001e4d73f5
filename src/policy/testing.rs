//! `hubgate test`: runs the `test_` rules of a policy directory, like `opa test` (regorus has
//! no runner of its own). A test passes when its rule evaluates to true.

use std::path::{Path, PathBuf};

use super::{engine_from, is_test_file, list_files, PolicyLoadError};

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Pass,
    Fail(String),
}

#[derive(Debug, Clone)]
pub struct TestResult {
    pub file: PathBuf,
    pub line: usize,
    pub rule: String,
    pub outcome: Outcome,
}

/// Line coverage of one policy file over the whole test run.
#[derive(Debug, Clone, PartialEq)]
pub struct FileCoverage {
    pub file: String,
    pub covered: std::collections::BTreeSet<u32>,
    pub not_covered: std::collections::BTreeSet<u32>,
}

impl FileCoverage {
    pub fn percent(&self) -> f64 {
        let total = self.covered.len() + self.not_covered.len();
        if total == 0 {
            100.0
        } else {
            100.0 * self.covered.len() as f64 / total as f64
        }
    }
}

#[derive(Debug, Default)]
pub struct Summary {
    pub results: Vec<TestResult>,
    /// Per policy file (test files left out), when coverage was asked for.
    pub coverage: Option<Vec<FileCoverage>>,
}

impl Summary {
    /// Covered lines over all policy files, in percent.
    pub fn total_coverage(&self) -> Option<f64> {
        let files = self.coverage.as_ref()?;
        let covered: usize = files.iter().map(|f| f.covered.len()).sum();
        let total: usize = files
            .iter()
            .map(|f| f.covered.len() + f.not_covered.len())
            .sum();
        Some(if total == 0 {
            100.0
        } else {
            100.0 * covered as f64 / total as f64
        })
    }
}

/// Each test runs on its own engine clone; their reports are merged: a line is covered when any
/// test covered it.
fn merge_coverage(into: &mut Vec<FileCoverage>, report: regorus::coverage::Report) {
    for file in report.files {
        let path = file.path.clone();
        if is_test_file(Path::new(&path)) {
            continue;
        }
        let entry = match into.iter_mut().find(|f| f.file == path) {
            Some(e) => e,
            None => {
                into.push(FileCoverage {
                    file: path,
                    covered: Default::default(),
                    not_covered: Default::default(),
                });
                into.last_mut().unwrap_or_else(|| unreachable!())
            }
        };
        entry.covered.extend(file.covered);
        entry.not_covered.extend(file.not_covered);
        let covered = entry.covered.clone();
        entry.not_covered.retain(|l| !covered.contains(l));
    }
}

impl Summary {
    pub fn passed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.outcome == Outcome::Pass)
            .count()
    }
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }
}

/// The `test_` rules a file defines, with the line of their first definition. Rules are read
/// from the source: a test is a rule whose head starts a line outside any brace, bracket or
/// parenthesis (a `test_` name inside a body is a reference or a variable, not a test). The
/// head may be indented: Rego allows that, and a test read only from column 1 was never run,
/// while the run still passed.
fn test_rules(text: &str) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    let mut nesting = Nesting::default();
    for (i, line) in text.lines().enumerate() {
        if nesting.at_top_level() {
            let head = line.trim_start();
            if head.starts_with("test_") {
                let name: String = head
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !out.iter().any(|(n, _)| *n == name) {
                    out.push((name, i + 1));
                }
            }
        }
        nesting.advance(line);
    }
    out
}

/// Where a reading of Rego source stands: how deep in brackets, and whether inside a raw
/// string (which may span lines). Strings and comments do not count.
#[derive(Default)]
struct Nesting {
    depth: usize,
    raw_string: bool,
}

impl Nesting {
    fn at_top_level(&self) -> bool {
        self.depth == 0 && !self.raw_string
    }

    fn advance(&mut self, line: &str) {
        let mut chars = line.chars();
        let mut string = false;
        while let Some(c) = chars.next() {
            if self.raw_string {
                self.raw_string = c != '`';
                continue;
            }
            if string {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '#' => break,
                '"' => string = true,
                '`' => self.raw_string = true,
                '{' | '[' | '(' => self.depth += 1,
                '}' | ']' | ')' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
    }
}

fn package_of(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.trim()
            .strip_prefix("package ")
            .map(|p| p.trim().to_string())
    })
}

fn outcome_of(value: Result<regorus::Value, String>) -> Outcome {
    match value {
        Ok(regorus::Value::Bool(true)) => Outcome::Pass,
        Ok(regorus::Value::Undefined) => {
            Outcome::Fail("undefined (a condition did not hold)".into())
        }
        Ok(other) => Outcome::Fail(format!("evaluated to {other}, not true")),
        Err(e) => Outcome::Fail(format!("error: {e}")),
    }
}

/// Whether a test rule has more than one definition (in one file, or in two files of one
/// package: a test file copied under a new name keeps its package).
fn defined_more_than_once(heads: &[super::Head], path: &str) -> bool {
    heads.iter().filter(|h| h.rule == path).count() > 1
}

/// The rules a test file defines beside the served set's: serve leaves test files out, so a
/// test file in the served package (`package hubgate`, as OPA users write tests) that defines
/// `deny`, `warn` or `needs_state`, another definition of a rule or function a policy file
/// defines, or a rule or function a policy file reads (`served`: the policy files' code and
/// package), made the tests judge a set serve never runs: a `deny` written there was tested,
/// passed, and refused nothing when serving; a `blocked_products` the served `deny` reads,
/// defined only beside the tests, made the test of that `deny` pass while serve, without it,
/// refused nothing.
fn test_file_rules(heads: &[super::Head], served: &[(Option<String>, String)]) -> Vec<TestResult> {
    let defined: std::collections::HashSet<&str> = heads
        .iter()
        .filter(|h| !is_test_file(Path::new(&h.file)))
        .map(|h| h.rule.as_str())
        .collect();
    let entry = [super::DENY_RULE, super::WARN_RULE, super::NEEDS_STATE_RULE];
    heads
        .iter()
        .filter(|h| is_test_file(Path::new(&h.file)))
        .filter(|h| {
            !h.rule
                .rsplit('.')
                .next()
                .is_some_and(|n| n.starts_with("test_"))
        })
        .filter(|h| {
            defined.contains(h.rule.as_str())
                || entry.contains(&h.rule.as_str())
                || served_reads(served, &h.rule)
        })
        .map(|h| TestResult {
            file: PathBuf::from(&h.file),
            line: h.line as usize,
            rule: h.rule.clone(),
            outcome: Outcome::Fail(
                "defined in a test file, which serve does not load: the tests judge a set with \
                 this definition, serve the set without it (move it to a policy file, or the \
                 test file to a package of its own)"
                    .into(),
            ),
        })
        .collect()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether the policy files' code (`served`: each file's package and code, comments and
/// strings blanked out) may read the rule `path` (`data.p.n`): by its path, through an import
/// of its package (`import data.p` then `p.n`, or `import data.p as q` then `q.n`), or in a
/// file of package `p` by its bare name, unless that file declares a local variable of that
/// name.
fn served_reads(served: &[(Option<String>, String)], path: &str) -> bool {
    let Some((package, name)) = path.rsplit_once('.') else {
        return false;
    };
    served.iter().any(|(of, code)| {
        whole_word(code, path, |_| true)
            || imported_as(code, package)
                .any(|alias| whole_word(code, &format!("{alias}.{name}"), |b| b != '.'))
            || (of.as_deref().map(|p| format!("data.{p}")).as_deref() == Some(package)
                && !declared_locally(code, name)
                && whole_word(code, name, |before| before != '.'))
    })
}

/// The names `code` imports `package` (`data.p.q`) under: `import data.p.q` (as `q`) or
/// `import data.p.q as r` (as `r`).
fn imported_as<'a>(code: &'a str, package: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    code.lines().filter_map(move |line| {
        let rest = line
            .trim()
            .strip_prefix("import ")?
            .trim()
            .strip_prefix(package)?;
        match rest.trim().strip_prefix("as ") {
            Some(alias) => Some(alias.trim()),
            None if rest.trim().is_empty() => package.rsplit('.').next(),
            None => None,
        }
    })
}

/// Whether `word` stands in `text` between characters that cannot continue a name, the one
/// before it (if any) also passing `before_ok`.
fn whole_word(text: &str, word: &str, before_ok: impl Fn(char) -> bool) -> bool {
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(|c| is_ident(c) || !before_ok(c)) && !after.is_some_and(is_ident)
    })
}

/// Whether a rule of `code` declares a local variable `name` (`some name`, `some k, name`,
/// `every name`, `name :=` on an indented line, or a function's parameter `f(name)`): there the
/// bare name is not the rule.
fn declared_locally(code: &str, name: &str) -> bool {
    code.lines().any(|line| {
        let head = line.trim_start();
        let indented = head.len() < line.len();
        let function = head.trim_start_matches(is_ident);
        if !indented && function.len() < head.len() {
            if let Some((params, _)) = function.strip_prefix('(').and_then(|p| p.split_once(')')) {
                if params.split(',').any(|p| p.trim() == name) {
                    return true;
                }
            }
        }
        if indented
            && head
                .strip_prefix(name)
                .is_some_and(|rest| rest.trim_start().starts_with(":="))
        {
            return true;
        }
        ["some ", "every "].iter().any(|kw| {
            line.match_indices(kw).any(|(at, _)| {
                if line[..at].chars().next_back().is_some_and(is_ident) {
                    return false;
                }
                let rest = &line[at + kw.len()..];
                let names = rest.split(" in ").next().unwrap_or_default();
                names.split(',').any(|n| n.trim() == name)
            })
        })
    })
}

/// A test with several definitions, each run on its own. Rego joins them with "or" (`test_a if
/// false` and `test_a if true` is true), so run as one rule a failing test passed beside a
/// passing one of the same name; `opa test` runs each. The test fails with its first failing
/// definition of this file (those of other files are reported under their own file).
fn each_alone(engine: &mut regorus::Engine, path: &str, file: &Path) -> Outcome {
    let file = file.display().to_string();
    let defs = super::definitions(engine, |p, f| p == path && f == file);
    for def in defs {
        if let Outcome::Fail(why) = outcome_of(def.value) {
            return Outcome::Fail(format!(
                "the definition at {} (run alone: a test defined more than once passes only \
                 if each definition does) is {why}",
                def.at
            ));
        }
    }
    Outcome::Pass
}

/// How long one test rule may run. serve bounds each evaluation by `policy.eval_timeout_ms`;
/// a test rule (or a rule it calls) that never ends would otherwise hang the run, and with it
/// the CI job that gates a policy change. Generous: a test may build large inputs.
pub const TEST_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs every test in `dir`, measuring line coverage when asked.
pub fn run(dir: &Path, coverage: bool) -> Result<Summary, PolicyLoadError> {
    let files = list_files(dir)?;
    let mut engine = engine_from(&files.rego, &files.data)?;
    engine.set_enable_coverage(coverage);
    engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
        limit: TEST_TIME_LIMIT,
        check_interval: std::num::NonZeroU32::new(64).unwrap_or(std::num::NonZeroU32::MIN),
    });
    let heads = super::heads(&mut engine);
    let mut served = Vec::new();
    for file in files.rego.iter().filter(|f| !is_test_file(f)) {
        let text = std::fs::read_to_string(file).map_err(|e| PolicyLoadError::File {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        served.push((package_of(&text), super::code_only(&text)));
    }
    let mut summary = Summary {
        results: test_file_rules(&heads, &served),
        ..Summary::default()
    };
    let mut merged = Vec::new();
    for file in &files.rego {
        let text = std::fs::read_to_string(file).map_err(|e| PolicyLoadError::File {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        let Some(package) = package_of(&text) else {
            continue;
        };
        for (rule, line) in test_rules(&text) {
            let mut engine = engine.clone();
            let path = format!("data.{package}.{rule}");
            let outcome = match defined_more_than_once(&heads, &path) {
                false => outcome_of(engine.eval_rule(path).map_err(|e| e.to_string())),
                true => each_alone(&mut engine, &path, file),
            };
            if coverage {
                if let Ok(report) = engine.get_coverage_report() {
                    merge_coverage(&mut merged, report);
                }
            }
            summary.results.push(TestResult {
                file: file.clone(),
                line,
                rule,
                outcome,
            });
        }
    }
    if coverage {
        merged.sort_by(|a, b| a.file.cmp(&b.file));
        summary.coverage = Some(merged);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_top_level_test_rules_once() {
        let text = "package p\n\ntest_a if {\n  true\n  test_helper\n}\ntest_a if false\n\
                    test_b := true\nx := [\n  test_in_a_list,\n]\n  test_indented if true\n\
                    y := \"{\" # {\ntest_after_braces_in_a_string if true\n\
                    z := `\n{\n`\ntest_after_a_raw_string if true\n";
        assert_eq!(
            test_rules(text),
            vec![
                ("test_a".to_string(), 3),
                ("test_b".to_string(), 8),
                ("test_indented".to_string(), 12),
                ("test_after_braces_in_a_string".to_string(), 14),
                ("test_after_a_raw_string".to_string(), 18),
            ]
        );
    }

    #[test]
    fn each_definition_of_a_test_is_run_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a_test.rego"),
            "package d\n\ntest_one if 1 == 2\n\ntest_one if 1 == 1\n\ntest_two if 1 == 1\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b_test.rego"),
            "package d\n\ntest_two if 1 == 2\n\ntest_three if true\n",
        )
        .unwrap();
        let summary = run(dir.path(), false).unwrap();
        let outcome = |file: &str, rule: &str| {
            summary
                .results
                .iter()
                .find(|r| r.rule == rule && r.file.ends_with(file))
                .map(|r| r.outcome.clone())
                .unwrap()
        };
        assert!(
            matches!(outcome("a_test.rego", "test_one"), Outcome::Fail(w) if w.contains("a_test.rego:3"))
        );
        assert_eq!(outcome("a_test.rego", "test_two"), Outcome::Pass);
        assert!(
            matches!(outcome("b_test.rego", "test_two"), Outcome::Fail(w) if w.contains("b_test.rego:3"))
        );
        assert_eq!(outcome("b_test.rego", "test_three"), Outcome::Pass);
    }

    /// A rule the served rules read, defined only beside the tests: the tests judged a set
    /// with it, serve one without it. A helper of the tests' own, or a name the served rules
    /// use as a local variable, is fine.
    #[test]
    fn a_test_file_that_defines_what_the_served_rules_read_fails_the_run() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("rules.rego"),
            "package hubgate\n\n# blocked_products, mock: see the tests\n\
             deny contains \"x\" if {\n\tsome f in input.findings\n\
             \tf.ProductArn in data.hubgate.blocked_products\n\tallowed(f)\n\
             \tcount := 1\n\tcount == 1\n}\n\nok(g) if g.ok\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("rules_test.rego"),
            "package hubgate\n\nblocked_products := {\"p\"}\n\nallowed(_) := true\n\n\
             mock := {\"findings\": [{\"ProductArn\": \"p\"}]}\n\nf := 1\n\ncount := 2\n\ng := 3\n\n\
             test_x if {\n\tcount(deny) == 1 with input as mock\n}\n",
        )
        .unwrap();
        let summary = run(dir.path(), false).unwrap();
        let failed: Vec<(&str, usize)> = summary
            .results
            .iter()
            .filter(|r| r.rule.starts_with("data."))
            .map(|r| (r.rule.as_str(), r.line))
            .collect();
        assert_eq!(
            failed,
            vec![
                ("data.hubgate.blocked_products", 3),
                ("data.hubgate.allowed", 5)
            ]
        );
        // a package of its own, imported by the served rules
        std::fs::write(
            dir.path().join("rules.rego"),
            "package hubgate\n\nimport data.lists as l\nimport data.more\n\n\
             deny contains \"x\" if {\n\tinput.p in l.blocked\n\tinput.q in more.listed\n}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("rules_test.rego"),
            "package lists\n\nblocked := {\"p\"}\n\nmock := 1\n\ntest_x if mock == 1\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("more_test.rego"),
            "package more\n\nlisted := {\"q\"}\n",
        )
        .unwrap();
        let summary = run(dir.path(), false).unwrap();
        let mut failed: Vec<&str> = summary
            .results
            .iter()
            .filter(|r| r.rule.starts_with("data."))
            .map(|r| r.rule.as_str())
            .collect();
        failed.sort();
        assert_eq!(failed, vec!["data.lists.blocked", "data.more.listed"]);
    }

    #[test]
    fn a_test_file_that_adds_to_the_served_rules_fails_the_run() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("rules.rego"),
            "package hubgate\n\nmember if input.principal.role == \"member\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("rules_test.rego"),
            "package hubgate\n\ndeny contains \"x\" if member\n\nmember if true\n\n\
             helper := 1\n\ntest_x if helper == 1\n",
        )
        .unwrap();
        let summary = run(dir.path(), false).unwrap();
        let failed: Vec<(&str, usize)> = summary
            .results
            .iter()
            .filter(|r| r.outcome != Outcome::Pass)
            .map(|r| (r.rule.as_str(), r.line))
            .collect();
        // a helper of its own and the test itself are fine
        assert_eq!(
            failed,
            vec![("data.hubgate.deny", 3), ("data.hubgate.member", 5)]
        );
        assert_eq!(summary.passed(), 1);
    }

    #[test]
    fn passing_failing_and_erroring_tests_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("t_test.rego"),
            "package t\n\ntest_ok if 1 == 1\n\ntest_bad if 1 == 2\n\ntest_value := 3\n",
        )
        .unwrap();
        let summary = run(dir.path(), false).unwrap();
        assert_eq!(summary.passed(), 1);
        assert_eq!(summary.failed(), 2);
        let bad = summary
            .results
            .iter()
            .find(|r| r.rule == "test_bad")
            .unwrap();
        assert_eq!(bad.line, 5);
    }
}
