//! Link libstdc++ statically, so the coordinator binary needs only glibc and libgcc_s at run
//! time (RocksDB is C++; `librocksdb-sys` asks for `-lstdc++`).
//!
//! The linker takes the first directory on its search path that holds `libstdc++.so` or
//! `libstdc++.a`. We put a directory holding only the compiler's `libstdc++.a` ahead of the
//! compiler's own, so `-lstdc++` resolves to the archive. No RocksDB rebuild is needed, and the
//! search path reaches every binary and test that links this crate.
//!
//! When the compiler has no `libstdc++.a` (e.g. `libstdc++-dev` without static libraries), the
//! build says so and links the shared library; `ops/tests/linking.rs` then fails and names it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CXX");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    match static_libstdcxx() {
        Some(archive) => {
            let dir = out_dir.join("static-libstdcxx");
            std::fs::create_dir_all(&dir).expect("create OUT_DIR/static-libstdcxx");
            let link = dir.join("libstdc++.a");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&archive, &link).expect("symlink libstdc++.a into OUT_DIR");
            println!("cargo::rustc-link-search=native={}", dir.display());
        }
        None => println!(
            "cargo::warning=no static libstdc++.a found (`c++ -print-file-name=libstdc++.a`); \
             the coordinator will need libstdc++.so.6 at run time"
        ),
    }
}

/// The C++ compiler's `libstdc++.a`, if it has one.
fn static_libstdcxx() -> Option<PathBuf> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let out = Command::new(cxx).arg("-print-file-name=libstdc++.a").output().ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    // Without the file the compiler prints the bare name back.
    (out.status.success() && path.is_absolute() && Path::new(&path).is_file()).then_some(path)
}
