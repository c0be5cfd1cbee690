//! Entry point of the `config` fuzz target (`fuzz/`, run with `cargo fuzz`): it takes arbitrary
//! bytes for a configuration file and must never panic. It also runs in a unit test on the
//! committed corpus, so it stays compiled and meaningful without the fuzzer. The S3 front end's
//! targets are in `ferry_s3::fuzz`.

/// A Ferry configuration file, parsed and validated as `ferry serve --config` does.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::Config::parse(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed corpus (`fuzz/corpus/config`), whole and cut short, and some hostile inputs.
    #[test]
    fn entry_point_survives_its_corpus() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/config");
        let mut n = 0;
        for e in std::fs::read_dir(dir).expect("fuzz/corpus/config") {
            let data = std::fs::read(e.expect("entry").path()).expect("read");
            config(&data);
            for cut in [1, data.len() / 2, data.len().saturating_sub(1)] {
                config(&data[..cut.min(data.len())]);
            }
            n += 1;
        }
        assert!(n >= 2, "{n} corpus files");
        config(b"[[region]]\nname = \"\"\nlisten = \"[::1]:99999\"\ndata_dir = \"\"\n");
        config(b"\xff\xfe[[peer]]");
    }
}
