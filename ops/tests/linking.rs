//! What the shipped binaries need at run time: glibc (libc, libm, the loader), libgcc_s, and
//! for the coordinator libstdc++ (RocksDB is C++) — all in every Debian and Ubuntu base
//! system, and named in the `.deb`'s Depends. No OpenSSL, no other shared library: a new
//! dependency that links one fails here.

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
fn binaries_link_only_glibc_libgcc_and_for_the_coordinator_libstdcxx() {
    let tt = Path::new(env!("CARGO_BIN_EXE_tt")).to_path_buf();
    let cases = [
        (tt, &[][..]),
        (ops::devfleet::find_agent_bin().unwrap(), &[][..]),
        (ops::devcluster::find_coordinator_bin().unwrap(), &["libstdc++.so.6"][..]),
    ];
    for (bin, extra) in cases {
        let libs = needed(&bin);
        assert!(libs.iter().any(|l| l == "libc.so.6"), "{}: {libs:?}", bin.display());
        let unexpected: Vec<&String> = libs
            .iter()
            .filter(|l| !BASE.contains(&l.as_str()) && !extra.contains(&l.as_str()))
            .collect();
        assert!(unexpected.is_empty(), "{} also needs {unexpected:?}", bin.display());
    }
}
