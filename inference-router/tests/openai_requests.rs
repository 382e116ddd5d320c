//! The OpenAI request checks as a table: `tests/cases/openai_requests.toml`
//! holds each body and what the check must answer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lattice_inference_router::openai::{check_request, Endpoint};
use lattice_inference_router::InferenceError;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    path: String,
    body: String,
    model: Option<String>,
    stream: Option<bool>,
    strip_usage: Option<bool>,
    param: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Cases {
    case: Vec<Case>,
}

#[test]
fn every_case_gets_its_answer() {
    let text = include_str!("cases/openai_requests.toml");
    let cases: Cases = toml::from_str(text).unwrap();
    assert!(cases.case.len() >= 15);
    for c in cases.case {
        let endpoint = Endpoint::from_path(&c.path).expect("a known path");
        let got = check_request(endpoint, c.body.as_bytes());
        match (&c.error, got) {
            (None, Ok(p)) => {
                assert_eq!(Some(&p.model), c.model.as_ref(), "{}", c.body);
                assert_eq!(Some(p.stream), c.stream, "{}", c.body);
                assert_eq!(Some(p.strip_usage), c.strip_usage, "{}", c.body);
            }
            (Some(expected), Err(e)) => {
                let InferenceError::BadRequest { param, .. } = &e else {
                    panic!("{}: not a bad request: {e:?}", c.body);
                };
                assert_eq!(param, &c.param, "{}", c.body);
                assert!(e.to_string().contains(expected.as_str()), "{}: {e}", c.body);
            }
            (None, Err(e)) => panic!("{}: refused: {e}", c.body),
            (Some(_), Ok(_)) => panic!("{}: accepted", c.body),
        }
    }
}
