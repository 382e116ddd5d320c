//! Prompts and resources as the gateway federates them. Prompt names use
//! the tools' scheme (`<server>__<prompt>`). Resource URIs are rewritten to
//! `lattice+mcp://<server>/<the original URI, percent-encoded>` so that any
//! URI, of any scheme, maps to exactly one server and back; URI templates
//! keep their `{variables}` so clients can still expand them.

use serde_json::Value;

/// The scheme of federated resource URIs.
pub const SCHEME: &str = "lattice+mcp://";

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn encode(s: &str, keep_braces: bool) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        if unreserved(b) || (keep_braces && matches!(b, b'{' | b'}')) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; None when an escape or the UTF-8 is malformed.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The federated form of a server's resource URI.
pub fn federated_uri(server: &str, uri: &str) -> String {
    format!("{SCHEME}{server}/{}", encode(uri, false))
}

/// The federated form of a server's URI template (variables kept).
pub fn federated_template(server: &str, template: &str) -> String {
    format!("{SCHEME}{server}/{}", encode(template, true))
}

/// (server, original URI) of a federated URI.
pub fn split_uri(federated: &str) -> Option<(String, String)> {
    let rest = federated.strip_prefix(SCHEME)?;
    let (server, encoded) = rest.split_once('/')?;
    crate::tools::check_server_name(server).ok()?;
    Some((server.to_string(), percent_decode(encoded)?))
}

/// Rewrites every `uri` in a `resources/read` result (or a list of
/// resources) with `f`.
pub fn rewrite_uris(value: &mut Value, key: &str, f: &dyn Fn(&str) -> String) {
    if let Some(items) = value.get_mut(key).and_then(Value::as_array_mut) {
        for item in items {
            if let Some(uri) = item.get("uri").and_then(Value::as_str).map(f) {
                item["uri"] = Value::String(uri);
            }
        }
    }
}

/// One page of a list result: its `key` items and the next cursor.
pub fn read_list(page: &Value, key: &str) -> Result<(Vec<Value>, Option<String>), String> {
    let items = page
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("list result has no `{key}` array"))?;
    let next = page
        .get("nextCursor")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok((items.clone(), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_of_any_scheme_map_to_one_server_and_back() {
        for uri in [
            "test://static-text",
            "file:///etc/a b.txt",
            "https://x.example/a?b=c#d",
            "weird%2Fescaped",
        ] {
            let f = federated_uri("docs", uri);
            assert!(f.starts_with("lattice+mcp://docs/"), "{f}");
            assert!(!f["lattice+mcp://docs/".len()..].contains('/'), "{f}");
            assert_eq!(split_uri(&f), Some(("docs".into(), uri.to_string())));
        }
        assert_eq!(
            split_uri("lattice+mcp://bad_name/x"),
            None,
            "server names have no `_`"
        );
        assert_eq!(split_uri("test://static-text"), None);
        assert_eq!(split_uri("lattice+mcp://docs/%zz"), None);
    }

    #[test]
    fn templates_keep_their_variables() {
        let t = federated_template("docs", "test://template/{id}/data");
        assert_eq!(t, "lattice+mcp://docs/test%3A%2F%2Ftemplate%2F{id}%2Fdata");
        let expanded = t.replace("{id}", "42");
        assert_eq!(
            split_uri(&expanded),
            Some(("docs".into(), "test://template/42/data".into()))
        );
    }
}
