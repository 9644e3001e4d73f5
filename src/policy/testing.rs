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
    let mut summary = Summary::default();
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
            let outcome = match engine.eval_rule(format!("data.{package}.{rule}")) {
                Ok(regorus::Value::Bool(true)) => Outcome::Pass,
                Ok(regorus::Value::Undefined) => {
                    Outcome::Fail("undefined (a condition did not hold)".into())
                }
                Ok(other) => Outcome::Fail(format!("evaluated to {other}, not true")),
                Err(e) => Outcome::Fail(format!("error: {e}")),
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
