//! Text edits of a config file that can be taken back exactly: a block
//! appended at the end, a path put first in `[policy] files`, a key line
//! put before it. Each edit is one inserted string; removing that string
//! gives back the bytes that were there before, whatever else the file
//! holds. Positions come from `toml_edit`'s spans of the parsed file, so
//! comments and layout are never rewritten.
//!
//! Must never: change a byte of the file outside the inserted text.

use std::ops::Range;

/// One insertion: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Insert {
    pub at: usize,
    pub text: String,
}

/// Applies insertions (positions in the original text).
pub(crate) fn apply(text: &str, mut inserts: Vec<Insert>) -> String {
    inserts.sort_by_key(|i| std::cmp::Reverse(i.at));
    let mut out = text.to_string();
    for i in inserts {
        out.insert_str(i.at, &i.text);
    }
    out
}

/// Appends `block` at the end, after a blank line.
pub(crate) fn append(text: &str, block: &str) -> Insert {
    let sep = if text.is_empty() || text.ends_with("\n\n") {
        ""
    } else if text.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    Insert {
        at: text.len(),
        text: format!("{sep}{block}"),
    }
}

fn policy_files(text: &str) -> Result<(Range<usize>, Range<usize>), String> {
    let doc = text
        .parse::<toml_edit::Document<String>>()
        .map_err(|e| format!("the config is not TOML: {e}"))?;
    let policy = doc
        .as_table()
        .get("policy")
        .and_then(|p| p.as_table_like())
        .ok_or("the config has no [policy] table")?;
    let (key, value) = policy
        .get_key_value("files")
        .ok_or("[policy] has no `files`")?;
    let array = value
        .as_array()
        .ok_or("`policy.files` is not an array of paths")?;
    let span = array.span().ok_or("`policy.files` has no position")?;
    let key_span = key.span().ok_or("`policy.files` has no position")?;
    Ok((key_span, span))
}

/// Puts `path` first in `[policy] files`.
pub(crate) fn add_policy_file(text: &str, path: &str) -> Result<Insert, String> {
    let (_, span) = policy_files(text)?;
    if !text[span.clone()].starts_with('[') {
        return Err("`policy.files` is not written as [...]".into());
    }
    Ok(Insert {
        at: span.start + 1,
        text: format!("{}, ", super::render::q(path)),
    })
}

/// Puts a `key = "value"` line before the line of `policy.files` (which
/// must start that line: `files = [...]` under `[policy]`).
pub(crate) fn add_policy_key(text: &str, key: &str, value: &str) -> Result<Insert, String> {
    let (key_span, _) = policy_files(text)?;
    let line_start = text[..key_span.start].rfind('\n').map_or(0, |i| i + 1);
    if !text[line_start..key_span.start].trim().is_empty() {
        return Err(format!(
            "`files` does not start its line under [policy]: add `{key} = {}` by hand",
            super::render::q(value)
        ));
    }
    Ok(Insert {
        at: line_start,
        text: format!("{key} = {}\n", super::render::q(value)),
    })
}

/// Takes the inserted strings back out of `text`: each must occur exactly
/// once (else the file changed around it, and the caller says so).
pub(crate) fn remove(text: &str, inserted: &[String]) -> Result<String, String> {
    let mut out = text.to_string();
    for s in inserted {
        match out.matches(s.as_str()).count() {
            1 => {
                if let Some(at) = out.find(s.as_str()) {
                    out.replace_range(at..at + s.len(), "");
                }
            }
            0 => {
                return Err(format!(
                    "its text is no longer in the file: {:?}",
                    first_line(s)
                ))
            }
            n => {
                return Err(format!(
                    "its text is in the file {n} times: {:?}",
                    first_line(s)
                ))
            }
        }
    }
    Ok(out)
}

fn first_line(s: &str) -> &str {
    s.trim_start().lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CONFIG: &str = "# mine\n[server]\nlisten = \"127.0.0.1:1\"\n\n[policy]\n# the set\nfiles = [\n  \"policies/a.cedar\", # first\n]\n\n[[routes]]\nname = \"x\"\nupstream = \"http://127.0.0.1:2\"";

    #[test]
    fn every_edit_comes_back_out_byte_for_byte() {
        let edits = vec![
            add_policy_file(CONFIG, "registry/p/x.cedar").unwrap(),
            add_policy_key(CONFIG, "tool_input_schema", "registry/p/in.cedarschema").unwrap(),
            append(CONFIG, "# block\n[[invariants]]\nid = \"i\"\n"),
        ];
        let inserted: Vec<String> = edits.iter().map(|e| e.text.clone()).collect();
        let after = apply(CONFIG, edits);
        // Still TOML, with the edits where they belong.
        let doc: toml::Table = after.parse().unwrap();
        assert_eq!(
            doc["policy"]["files"].as_array().unwrap()[0].as_str(),
            Some("registry/p/x.cedar")
        );
        assert_eq!(
            doc["policy"]["tool_input_schema"].as_str(),
            Some("registry/p/in.cedarschema")
        );
        assert_eq!(doc["invariants"][0]["id"].as_str(), Some("i"));
        assert_eq!(remove(&after, &inserted).unwrap(), CONFIG);
    }

    #[test]
    fn a_changed_file_keeps_its_changes_and_loses_the_edit() {
        let edit = append(CONFIG, "[[invariants]]\nid = \"i\"\n");
        let after = apply(CONFIG, vec![edit.clone()]);
        let changed = after.replace("# mine", "# theirs");
        assert_eq!(
            remove(&changed, std::slice::from_ref(&edit.text)).unwrap(),
            CONFIG.replace("# mine", "# theirs")
        );
        let gone = after.replace("id = \"i\"", "id = \"j\"");
        assert!(remove(&gone, &[edit.text])
            .unwrap_err()
            .contains("no longer in the file"));
    }

    #[test]
    fn a_dotted_or_missing_policy_table_is_refused() {
        assert_eq!(
            add_policy_file("[server]\n", "p").unwrap_err(),
            "the config has no [policy] table"
        );
        assert!(add_policy_key("policy.files = [\"a\"]\n", "k", "v")
            .unwrap_err()
            .contains("by hand"));
    }
}
