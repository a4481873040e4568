//! What the shipped binaries need at run time: glibc (libc, libm, the loader) and libgcc_s,
//! nothing else. libgcc_s is GCC's unwinder, which Rust's std links for panics and which glibc
//! itself loads for `pthread_cancel` and `backtrace`: it ships with glibc on every Debian and
//! Ubuntu system (`libgcc-s1` is a required package). The coordinator's C++ runtime (RocksDB is
//! C++) is linked statically by `coordinator/build.rs`. No OpenSSL, no libstdc++, no other
//! shared library: a new dependency that links one fails here.

use std::path::Path;
use std::process::Command;

/// Libraries every binary may need (glibc's own and the unwinder).
const BASE: &[&str] =
    &["linux-vdso.so.1", "libc.so.6", "libm.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2"];

/// The shared libraries `ldd` lists for `bin`, by file name.
fn needed(bin: &Path) -> Vec<String> {
    let out = Command::new("ldd").arg(bin).output().expect("ldd (libc-bin) runs");
    assert!(
        out.status.success(),
        "ldd {}: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|lib| lib.rsplit('/').next().unwrap_or(lib).to_string())
        .collect()
}

#[test]
fn binaries_link_only_glibc_and_its_unwinder() {
    let bins = [
        Path::new(env!("CARGO_BIN_EXE_tt")).to_path_buf(),
        ops::devfleet::find_agent_bin().unwrap(),
        ops::devcluster::find_coordinator_bin().unwrap(),
    ];
    for bin in bins {
        let libs = needed(&bin);
        assert!(libs.iter().any(|l| l == "libc.so.6"), "{}: {libs:?}", bin.display());
        let unexpected: Vec<&String> =
            libs.iter().filter(|l| !BASE.contains(&l.as_str())).collect();
        assert!(unexpected.is_empty(), "{} also needs {unexpected:?}", bin.display());
    }
}
