//! Templates: a whole starting configuration written into a new
//! directory, checked by the gateway's loader first, then its included
//! entries installed into it.
//!
//! Must never: write into a directory that already has the template's files.

use super::write::write_whole;
use super::*;

/// A template's files, written into a new directory, then its included
/// entries installed into the config it made.
pub fn template(
    entry: &Entry,
    into: &Path,
    catalog: &Catalog,
    opts: &Options,
) -> Result<Vec<PathBuf>> {
    if entry.kind != Kind::Template {
        return Err(install_err(
            entry,
            format!("is a {}, not a template", entry.kind),
        ));
    }
    let mut files = vec![(
        into.join("lattice.toml"),
        entry.doc["config"].as_str().unwrap_or("").to_string(),
    )];
    for (rel, text) in entry.doc["files"].as_object().into_iter().flatten() {
        safe_relative(entry, rel)?;
        files.push((into.join(rel), text.as_str().unwrap_or("").to_string()));
    }
    for (path, _) in &files {
        if path.exists() {
            return Err(install_err(
                entry,
                format!(
                    "{} exists: a template starts a new gateway directory",
                    path.display()
                ),
            ));
        }
    }
    // Checked as the gateway would load it, before anything is written.
    let config_path = files[0].0.clone();
    let overlay: lattice_gateway::runtime::Overlay = files.iter().cloned().collect();
    let config = lattice_gateway::config::parse(&config_path, &files[0].1)
        .map_err(|e| install_err(entry, gw_err(e)))?;
    lattice_gateway::runtime::Runtime::build_with(config, &overlay)
        .map_err(|e| install_err(entry, format!("its config is refused: {}", gw_err(e))))?;
    let trust = sign::verify(entry, &[]);
    if !trust.is_trusted() && !opts.allow_untrusted {
        return Err(install_err(
            entry,
            format!(
                "refused: {} — install it with --allow-untrusted",
                trust.describe()
            ),
        ));
    }
    for (path, text) in &files {
        write_whole(path, text)?;
    }
    let gw = Gateway::open(&config_path)?;
    for inc in entry.doc["includes"].as_array().into_iter().flatten() {
        let name = inc["name"].as_str().unwrap_or("");
        let version = inc["version"].as_str();
        let included = catalog.find(name, version)?;
        install(&gw, included, opts)?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}
