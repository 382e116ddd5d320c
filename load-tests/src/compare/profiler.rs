//! Profiles a target while the harness loads it: `perf record` with DWARF
//! call graphs on the target's process for its saturation run (or, with
//! `--profile-rate`, its run at that fixed rate), then the report
//! (`<target>.perf.txt`, where the CPU goes, inclusive) and, when
//! `inferno` is installed (`cargo install inferno`), a flame graph
//! (`<target>.svg`).
//!
//! Must never: leave `perf` running after the run it records.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A `perf record` attached to a process.
pub struct Recorder {
    child: Child,
    data: PathBuf,
    out: PathBuf,
    name: String,
}

/// Starts recording `pid` for `seconds` (plus a margin), into `out`.
pub fn record(out: &Path, name: &str, pid: u32, seconds: u64) -> Result<Recorder> {
    std::fs::create_dir_all(out)?;
    let data = out.join(format!("{name}.perf.data"));
    let child = Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "499",
            "--call-graph",
            "dwarf,16384",
        ])
        .args(["-p", &pid.to_string(), "-o"])
        .arg(&data)
        .args(["--", "sleep", &(seconds + 1).to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("run perf (Debian's linux-perf)")?;
    Ok(Recorder {
        child,
        data,
        out: out.to_path_buf(),
        name: name.to_string(),
    })
}

impl Recorder {
    /// Waits for the recording, then writes the report and the flame graph.
    pub fn finish(mut self) -> Result<()> {
        let status = self.child.wait()?;
        if !status.success() {
            bail!("perf record failed ({status}): is perf_event_paranoid low enough?");
        }
        // Where the CPU goes: by thread, then by function (inclusive).
        let mut text = Vec::new();
        for args in [
            &["--sort", "comm", "-g", "none"][..],
            &["--children", "-g", "none", "--percent-limit", "0.5"][..],
        ] {
            let report = Command::new("perf")
                .args(["report", "--stdio", "--no-inline"])
                .args(args)
                .arg("-i")
                .arg(&self.data)
                .output()?;
            text.extend_from_slice(&report.stdout);
        }
        std::fs::write(self.out.join(format!("{}.perf.txt", self.name)), text)?;
        let has_inferno = Command::new("inferno-flamegraph")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if has_inferno {
            let script = self.out.join(format!("{}.perf.script", self.name));
            let svg = self.out.join(format!("{}.svg", self.name));
            let sh = format!(
                "perf script -i '{}' > '{}' && inferno-collapse-perf '{}' | inferno-flamegraph > '{}'",
                self.data.display(),
                script.display(),
                script.display(),
                svg.display()
            );
            Command::new("sh").args(["-c", &sh]).status()?;
        }
        Ok(())
    }
}
