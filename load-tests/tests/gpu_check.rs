//! `lattice-gpu-check` runs end to end on the kernel emulator, smaller
//! (`--scale 0.25 --tokens 4`, no benchmark): every kernel, whole models,
//! the worker's API served from the CUDA device — so the one program a
//! lent GPU session runs is known to work before it spends its minutes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

/// Runs `cmd`; its stdout, once it exited with success (its output in
/// the failure otherwise).
fn succeeds(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_gpu_check_passes_on_the_kernel_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("gpu-check.md");
    let emu = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-emu");
    succeeds(
        Command::new(env!("CARGO_BIN_EXE_lattice-gpu-check"))
            .args(["--scale", "0.25", "--tokens", "4", "--emulated"])
            .arg(&emu)
            .arg("--out")
            .arg(&table),
    );
    let written = std::fs::read_to_string(&table).unwrap();
    assert!(written.contains("cuda (emulated on the host)"), "{written}");
    for row in [
        "| matmul bf16 9×",
        "| attention mixed, window 64, head_dim 128, f32 cache | pass |",
        "| attention mixed, head_dim 128, bf16 cache | pass |",
        "| llama bf16: 4 greedy tokens | pass | identical to the CPU's |",
        "| qwen2 f32, all on the GEMV: logits of a 40-token prompt | pass |",
        "| worker on the GPU: a chat, streamed | pass |",
    ] {
        assert!(written.contains(row), "{row} missing from:\n{written}");
    }
    assert!(written.contains("\n0 check(s) failed"), "{written}");
    assert!(!written.contains("FAIL"), "{written}");
}

#[test]
fn the_gpu_checks_sdk_step_passes_on_the_cpu() {
    // The step a GPU session runs with `--device cuda`, here with the
    // debug build and the CPU: the script itself must work.
    let lattice = Path::new(env!("CARGO_BIN_EXE_lattice-gpu-check")).with_file_name("lattice");
    assert!(
        lattice.exists(),
        "build the workspace first: {}",
        lattice.display()
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let stdout = succeeds(
        Command::new("bash")
            .current_dir(&root)
            .arg("scripts/gpu-check")
            .arg("sdk")
            .arg(&lattice)
            .arg("cpu"),
    );
    for check in [
        "streamed chat",
        "whole chat equals the streamed one",
        "forced tool call parsed",
        "bad request is a 400",
    ] {
        let row = format!("| OpenAI SDK through the gateway, worker on cpu: {check} | pass |");
        assert!(stdout.contains(&row), "{row} missing from:\n{stdout}");
    }
}
