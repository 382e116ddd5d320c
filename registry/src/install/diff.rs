//! A unified diff of two texts, line by line, for showing what an install,
//! uninstall or update will change before it does. Config files are small:
//! a longest-common-subsequence table is enough (and bounded).
//!
//! Must never: be used on texts too big to compare (it then says so).

const MAX_CELLS: usize = 4_000_000;
const CONTEXT: usize = 2;

/// `---`/`+++` headers and hunks with two lines of context; empty when the
/// texts are equal.
pub fn unified(name: &str, before: Option<&str>, after: Option<&str>) -> String {
    if before == after {
        return String::new();
    }
    let a: Vec<&str> = before.map(|t| t.lines().collect()).unwrap_or_default();
    let b: Vec<&str> = after.map(|t| t.lines().collect()).unwrap_or_default();
    let mut out = format!(
        "--- {}\n+++ {}\n",
        if before.is_some() { name } else { "/dev/null" },
        if after.is_some() { name } else { "/dev/null" }
    );
    if (a.len() + 1) * (b.len() + 1) > MAX_CELLS {
        out.push_str(&format!(
            "(too long to compare: {} lines → {} lines)\n",
            a.len(),
            b.len()
        ));
        return out;
    }
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let w = b.len() + 1;
    let mut lcs = vec![0u32; (a.len() + 1) * w];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i * w + j] = if a[i] == b[j] {
                lcs[(i + 1) * w + j + 1] + 1
            } else {
                lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
            };
        }
    }
    // The edit script: (' ' | '-' | '+', line).
    let mut script = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            script.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) {
            script.push(('-', a[i]));
            i += 1;
        } else {
            script.push(('+', b[j]));
            j += 1;
        }
    }
    // Hunks: changed lines with their context.
    let changed: Vec<usize> = (0..script.len()).filter(|&k| script[k].0 != ' ').collect();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(CONTEXT);
        let mut end = changed[k];
        while k < changed.len() && changed[k] <= end + 2 * CONTEXT + 1 {
            end = changed[k];
            k += 1;
        }
        let end = (end + CONTEXT + 1).min(script.len());
        let old_start = script[..start].iter().filter(|s| s.0 != '+').count();
        let new_start = script[..start].iter().filter(|s| s.0 != '-').count();
        let old_n = script[start..end].iter().filter(|s| s.0 != '+').count();
        let new_n = script[start..end].iter().filter(|s| s.0 != '-').count();
        out.push_str(&format!(
            "@@ -{},{old_n} +{},{new_n} @@\n",
            old_start + usize::from(old_n > 0),
            new_start + usize::from(new_n > 0)
        ));
        for (tag, line) in &script[start..end] {
            out.push(*tag);
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::unified;

    #[test]
    fn hunks_show_what_changed_with_context() {
        let before = "a\nb\nc\nd\ne\nf\ng\n";
        let after = "a\nb\nc\nX\ne\nf\ng\nh\n";
        assert_eq!(
            unified("f.toml", Some(before), Some(after)),
            "--- f.toml\n+++ f.toml\n@@ -2,6 +2,7 @@\n b\n c\n-d\n+X\n e\n f\n g\n+h\n"
        );
        assert_eq!(unified("f", Some("same\n"), Some("same\n")), "");
        assert_eq!(
            unified("new.cedar", None, Some("permit;\n")),
            "--- /dev/null\n+++ new.cedar\n@@ -0,0 +1,1 @@\n+permit;\n"
        );
    }
}
