//! Every input in the committed fuzz corpora (`fuzz/corpus/<target>/`) run through its
//! harness: an input that once found a bug, or that the fuzzer kept because it reached new
//! code, fails the build if it fails again.

use std::path::Path;

#[test]
fn every_committed_input_passes_its_harness() {
    let corpora = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut failures = Vec::new();
    for (name, harness) in pochta_fuzz::TARGETS {
        let folder = corpora.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&folder)
            .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{name}: no corpus");
        for path in inputs {
            // A file a running fuzzer has just replaced is skipped.
            let Ok(data) = std::fs::read(&path) else {
                continue;
            };
            if std::panic::catch_unwind(|| harness(&data)).is_err() {
                failures.push(path.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "inputs that fail: {failures:#?}");
}
