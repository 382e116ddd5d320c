//! `lattice policy test` case files: TOML with `[[case]]` entries, each a
//! request and the decision it must get. Parsing and running are pure; the
//! CLI reads the file and prints the results.

use serde::Deserialize;

use crate::engine::{Decision, Outcome, PolicyEngine};
use crate::request::{Action, AuthzRequest, Principal, RequestContext, Resource};
use crate::PolicyError;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    #[serde(rename = "case", default)]
    pub cases: Vec<Case>,
}

/// One case: a request, the expected outcome and, optionally, the exact set
/// of deciding policy ids.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub principal: Principal,
    pub action: Action,
    pub resource: Resource,
    #[serde(default = "default_context")]
    pub context: RequestContext,
    pub expect: ExpectedOutcome,
    #[serde(default)]
    pub expect_policies: Option<Vec<String>>,
}

fn default_context() -> RequestContext {
    RequestContext::new(0, "127.0.0.1")
}

impl Case {
    pub fn request(&self) -> AuthzRequest {
        AuthzRequest {
            principal: self.principal.clone(),
            action: self.action,
            resource: self.resource.clone(),
            context: self.context.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectedOutcome {
    Allow,
    Deny,
}

/// What a case got and whether that matched.
#[derive(Debug)]
pub struct CaseResult {
    pub name: String,
    pub decision: Decision,
    pub passed: bool,
    pub mismatch: Option<String>,
}

impl CaseFile {
    pub fn parse(file: &str, text: &str) -> Result<Self, PolicyError> {
        let parsed: CaseFile = toml::from_str(text).map_err(|e| PolicyError::Cases {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        if parsed.cases.is_empty() {
            return Err(PolicyError::Cases {
                file: file.to_string(),
                message: "no [[case]] entries".into(),
            });
        }
        Ok(parsed)
    }
}

/// Runs every case and reports each result.
pub fn run_cases(engine: &PolicyEngine, file: &CaseFile) -> Vec<CaseResult> {
    file.cases
        .iter()
        .map(|case| {
            let decision = engine.decide(&case.request());
            let expected = match case.expect {
                ExpectedOutcome::Allow => Outcome::Allow,
                ExpectedOutcome::Deny => Outcome::Deny,
            };
            let mut mismatch = None;
            if decision.outcome != expected {
                mismatch = Some(format!(
                    "expected {}, got {}",
                    expected.as_str(),
                    decision.summary()
                ));
            } else if let Some(want) = &case.expect_policies {
                let mut want = want.clone();
                want.sort();
                if want != decision.policies {
                    mismatch = Some(format!(
                        "expected deciding policies [{}], got [{}]",
                        want.join(", "),
                        decision.policies.join(", ")
                    ));
                }
            }
            CaseResult {
                name: case.name.clone(),
                passed: mismatch.is_none(),
                decision,
                mismatch,
            }
        })
        .collect()
}
