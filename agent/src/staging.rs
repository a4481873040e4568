//! Staging (Teletraan's `deploy-stager`): points an env's target symlink at an extracted build,
//! renders the build's hook templates, finds its hook directory, and removes builds no env
//! needs any more.
//!
//! Layout (spec §A.2.1): `<builds_dir>/<build_id>/` is an extracted build (with the marker
//! `<build_id>.extracted` and the archive `<env>-<build_id>.<ext>` beside it); the target
//! (`/tmp/<env>` by default) is a symlink to it. Hooks live in `<target>/teletraan/`, and
//! `<target>/teletraan_template/` is the pristine copy that templates are rendered from.
//!
//! The agent runs as the service user, so the build tree already belongs to it: Teletraan's
//! `chown -R <user_role>` of the build before the swap is not done.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::template;

/// The hook directory inside a build.
pub const SCRIPT_DIRNAME: &str = "teletraan";
/// The pristine copy of [`SCRIPT_DIRNAME`], made the first time a build is staged.
pub const TEMPLATE_DIRNAME: &str = "teletraan_template";
/// Files with this suffix are rendered to the same name without it.
pub const TEMPLATE_SUFFIX: &str = ".tmpl";
/// Suffix of the marker written beside a fully extracted build.
const EXTRACTED_SUFFIX: &str = ".extracted";
/// Suffix of a marker the Python agent once wrote; removed with its build.
const LEGACY_STAGED_SUFFIX: &str = ".staged";
/// Where the pristine copy is assembled before it is renamed into place.
const PARTIAL_TEMPLATE_DIRNAME: &str = "teletraan_template.tt-partial";

#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error(
        "build id {build_id:?} is not a single path component; it cannot name a directory in \
         the builds directory"
    )]
    InvalidBuildId { build_id: String },
    #[error("target {path} has no file name; the target must name the symlink to create")]
    InvalidTarget { path: PathBuf },
    #[error("build {build_id} is not extracted at {path}; download and extract it first")]
    BuildMissing { build_id: String, path: PathBuf },
    #[error(
        "{path} is {kind}, not a symlink; the agent does not delete it: move it away so the \
         build's symlink can take its place"
    )]
    NotSymlink { path: PathBuf, kind: &'static str },
    #[error("template {path} is not UTF-8 text; fix the template in the build")]
    TemplateNotUtf8 { path: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },
}

/// What [`stage`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageOutcome {
    /// The build the target pointed at before (see [`current_build`]).
    pub previous_build: Option<String>,
    /// False when the target already pointed at the build and only templates were rendered.
    pub switched: bool,
    /// The files rendered from templates, relative to `<target>/teletraan/`, in walk order.
    pub rendered: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("env name {env_name:?} cannot prefix archive names (empty or contains '/')")]
    InvalidEnvName { env_name: String },
    #[error("cannot list the builds directory {path}: {source}")]
    List { path: PathBuf, source: io::Error },
    #[error(
        "cannot remove {path} of stale build {build_id}: {source} (already removed: \
         {removed:?}); fix the permissions, the next cleanup retries"
    )]
    Remove { build_id: String, path: PathBuf, source: io::Error, removed: Vec<String> },
}

/// What [`remove_env`] did with a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetRemoval {
    /// The symlink pointed into the builds directory and was removed.
    Removed { build_id: String },
    /// Nothing was at the target.
    Absent,
    /// The target is not a symlink into the builds directory (a real directory, a file, a
    /// link elsewhere) and was left alone.
    LeftAlone,
}

/// The build the target points at: the last component of the symlink's destination.
/// `None` when the target is absent, not a symlink, or dangling (as in Teletraan: a link to a
/// removed build means nothing is staged, so staging that build again swaps the link).
pub fn current_build(target: &Path) -> Option<String> {
    let meta = fs::symlink_metadata(target).ok()?;
    if !meta.file_type().is_symlink() || fs::metadata(target).is_err() {
        return None;
    }
    let destination = fs::read_link(target).ok()?;
    destination.file_name()?.to_str().map(str::to_owned)
}

/// Stages `build_id` at `target` (`enable_package`). If the target already points at
/// `<builds_dir>/<build_id>` only the templates are rendered again (with `vars`, which may
/// have changed). Otherwise a symlink `<target>_tmp` is created and renamed over the target,
/// so the target always names either the old build or the new one, and the directory is
/// fsynced. Then templates are rendered (see [`transform`]).
///
/// The link's destination is absolute (a relative `builds_dir` is resolved against the
/// current directory). A target that exists and is not a symlink is an error, never deleted:
/// it may be the user's data. A template that cannot be rendered fails staging (Teletraan logs
/// it and reports success, leaving a stale or missing script to fail later, less clearly).
pub fn stage(
    builds_dir: &Path,
    build_id: &str,
    target: &Path,
    vars: &BTreeMap<String, String>,
) -> Result<StageOutcome, StagingError> {
    if !is_path_component(build_id) {
        return Err(StagingError::InvalidBuildId { build_id: build_id.to_owned() });
    }
    let (parent, name) = split_target(target)?;
    let target = parent.join(name);
    let builds_dir = std::path::absolute(builds_dir).map_err(io_err("resolve", builds_dir))?;
    let build_dir = builds_dir.join(build_id);
    match fs::metadata(&build_dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(build_missing(build_id, &build_dir)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(build_missing(build_id, &build_dir));
        }
        Err(e) => return Err(io_err("inspect", &build_dir)(e)),
    }

    let previous_build = current_build(&target);
    match fs::symlink_metadata(&target) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let destination =
                fs::read_link(&target).map_err(io_err("read the symlink", &target))?;
            if destination == build_dir {
                tracing::info!(build_id, target = %target.display(), "build already staged");
                let rendered = transform(&target, vars)?;
                return Ok(StageOutcome { previous_build, switched: false, rendered });
            }
        }
        Ok(meta) => return Err(StagingError::NotSymlink { path: target, kind: kind_of(&meta) }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", &target)(e)),
    }

    swap_symlink(&build_dir, &parent, name)?;
    tracing::info!(
        build_id, previous = ?previous_build, target = %target.display(), "target points at build"
    );
    let rendered = transform(&target, vars)?;
    Ok(StageOutcome { previous_build, switched: true, rendered })
}

/// Renders the hook templates of the build at `target` (`transform_script`). Nothing happens
/// without a `<target>/teletraan/` directory. The first time, that directory is copied to
/// `<target>/teletraan_template/` (modes and symlinks kept; assembled under a temporary name
/// and renamed, so a crash never leaves a partial copy to be used forever). Every regular file
/// (or symlink to one) named `*.tmpl` under the template copy is rendered with
/// [`template::render`] to the same relative path under `teletraan/` without the suffix, with
/// the template's permission bits, replacing the previous output by rename.
///
/// Teletraan finds the output path by string replacement over the whole path, which also
/// rewrites `.tmpl` or `teletraan_template` in directory names; here only the file name
/// changes. A file named exactly `.tmpl` has no output name and is skipped. Directories are
/// not followed through symlinks (as `os.walk`).
pub fn transform(
    target: &Path,
    vars: &BTreeMap<String, String>,
) -> Result<Vec<PathBuf>, StagingError> {
    let script_dir = target.join(SCRIPT_DIRNAME);
    if !script_dir.is_dir() {
        return Ok(Vec::new());
    }
    let template_dir = target.join(TEMPLATE_DIRNAME);
    match fs::symlink_metadata(&template_dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let partial = target.join(PARTIAL_TEMPLATE_DIRNAME);
            if fs::symlink_metadata(&partial).is_ok() {
                remove_tree(&partial).map_err(io_err("remove the partial copy", &partial))?;
            }
            copy_tree(&script_dir, &partial)?;
            fs::rename(&partial, &template_dir)
                .map_err(io_err("rename the template copy", &template_dir))?;
        }
        Err(e) => return Err(io_err("inspect", &template_dir)(e)),
    }
    let mut rendered = Vec::new();
    render_dir(&template_dir, &script_dir, Path::new(""), vars, &mut rendered)?;
    Ok(rendered)
}

/// The hook directory of `env_name` in the build at `target` (§A.1.7):
/// `<target>/teletraan/<env_name>/` if it is a directory (one artifact serving several envs),
/// else `<target>/teletraan/` if it is one, else `None`. An env name that is not a single path
/// component (`..`, `a/b`) never selects a subdirectory.
pub fn script_dir(target: &Path, env_name: &str) -> Option<PathBuf> {
    let base = target.join(SCRIPT_DIRNAME);
    if is_path_component(env_name) {
        let per_env = base.join(env_name);
        if per_env.is_dir() {
            return Some(per_env);
        }
    }
    base.is_dir().then_some(base)
}

/// Removes the stale builds of `env_name` from `builds_dir` and returns their ids, oldest
/// first (`clean_stale_builds`, §A.2.6).
///
/// The env's builds are the regular files named `<env_name>-<id>.<anything>` (the archives;
/// the id ends at the first `.`). All but the `keep` newest by modification time are stale,
/// except ids in `in_use`, which the caller fills with every build any env references and the
/// builds targets point at. A stale build loses `<id>.extracted`, `<id>/` and its archives.
/// The caller runs this for every env (Teletraan only cleans the env of the last goal, so
/// other envs' builds pile up).
///
/// Env names and ids may both contain `-`, so `a-b-X.tar.gz` can be env `a`'s build `b-X` or
/// env `a-b`'s build `X`. An id without `-` is unambiguous: a longer env name always leaves a
/// `-` in the id. An id with `-` counts only if `<id>/` or `<id>.extracted` exists, i.e. a
/// build with exactly that id was extracted here; so env `a` never removes, nor counts
/// towards `keep`, env `a-b`'s archives. The price: an archive with a `-` in its id whose tree
/// and marker are gone (a crash in the middle of a cleanup) is no longer removed.
pub fn clean_stale_builds(
    builds_dir: &Path,
    env_name: &str,
    keep: usize,
    in_use: &BTreeSet<String>,
) -> Result<Vec<String>, CleanupError> {
    if env_name.is_empty() || env_name.contains('/') {
        return Err(CleanupError::InvalidEnvName { env_name: env_name.to_owned() });
    }
    let mut builds = env_builds(builds_dir, env_name)?;
    builds.retain(|id, _| !id.contains('-') || has_extracted_tree(builds_dir, id));
    let mut by_age: Vec<(&String, &LocalBuild)> = builds.iter().collect();
    // Newest first; equal times in id order so that the choice does not depend on listing order.
    by_age.sort_by(|a, b| b.1.modified.cmp(&a.1.modified).then_with(|| a.0.cmp(b.0)));

    let mut removed = Vec::new();
    for (id, build) in by_age.into_iter().skip(keep).rev() {
        if in_use.contains(id.as_str()) {
            tracing::debug!(build_id = %id, env = env_name, "stale build kept: in use");
            continue;
        }
        if let Err((path, source)) = remove_build(builds_dir, id, &build.archives) {
            return Err(CleanupError::Remove { build_id: id.clone(), path, source, removed });
        }
        tracing::info!(build_id = %id, env = env_name, "removed stale build");
        removed.push(id.clone());
    }
    Ok(removed)
}

/// Removes the target symlink of a deleted env if it points into `builds_dir` (the builds
/// themselves are left to [`clean_stale_builds`]), and a `<target>_tmp` symlink left by an
/// interrupted swap. Anything else at the target is left alone: it is not ours.
pub fn remove_env(target: &Path, builds_dir: &Path) -> Result<TargetRemoval, StagingError> {
    let (parent, name) = split_target(target)?;
    let target = parent.join(name);
    let builds_dir = std::path::absolute(builds_dir).map_err(io_err("resolve", builds_dir))?;
    let into_builds = |link: &Path| -> Result<Option<String>, StagingError> {
        match fs::symlink_metadata(link) {
            Ok(meta) if meta.file_type().is_symlink() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("inspect", link)(e)),
        }
        let destination = fs::read_link(link).map_err(io_err("read the symlink", link))?;
        let build_id = destination.file_name().and_then(OsStr::to_str);
        Ok(build_id.filter(|_| destination.parent() == Some(&*builds_dir)).map(str::to_owned))
    };

    let tmp = tmp_link_path(&parent, name);
    if into_builds(&tmp)?.is_some() {
        fs::remove_file(&tmp).map_err(io_err("remove", &tmp))?;
    }
    match into_builds(&target)? {
        Some(build_id) => {
            fs::remove_file(&target).map_err(io_err("remove", &target))?;
            sync_dir(&parent)?;
            Ok(TargetRemoval::Removed { build_id })
        }
        None if fs::symlink_metadata(&target).is_ok() => Ok(TargetRemoval::LeftAlone),
        None => Ok(TargetRemoval::Absent),
    }
}

/// One build of an env as found in the builds directory.
struct LocalBuild {
    /// Newest modification time of its archives.
    modified: SystemTime,
    /// Its archive file names (usually one).
    archives: Vec<OsString>,
}

/// The archives in `builds_dir` named `<env_name>-<id>.<anything>`, grouped by id. A missing
/// builds directory has none.
fn env_builds(
    builds_dir: &Path,
    env_name: &str,
) -> Result<BTreeMap<String, LocalBuild>, CleanupError> {
    let list_err = |source| CleanupError::List { path: builds_dir.to_path_buf(), source };
    let entries = match fs::read_dir(builds_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(list_err(e)),
    };
    let mut builds = BTreeMap::<String, LocalBuild>::new();
    for entry in entries {
        let entry = entry.map_err(list_err)?;
        let file_name = entry.file_name();
        let Some(id) = file_name.to_str().and_then(|name| archive_build_id(name, env_name)) else {
            continue;
        };
        // Files removed while we list are skipped, not errors.
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let modified = meta.modified().map_err(list_err)?;
        let build =
            builds.entry(id.to_owned()).or_insert(LocalBuild { modified, archives: Vec::new() });
        build.modified = build.modified.max(modified);
        build.archives.push(file_name.clone());
    }
    Ok(builds)
}

/// The build id in an archive name `<env_name>-<id>.<anything>`: after the prefix, up to the
/// first `.`. `None` if the name does not have that shape or the id is empty.
fn archive_build_id<'a>(file_name: &'a str, env_name: &str) -> Option<&'a str> {
    let rest = file_name.strip_prefix(env_name)?.strip_prefix('-')?;
    let (id, _extension) = rest.split_once('.')?;
    (!id.is_empty()).then_some(id)
}

fn has_extracted_tree(builds_dir: &Path, id: &str) -> bool {
    fs::symlink_metadata(builds_dir.join(id)).is_ok()
        || fs::symlink_metadata(builds_dir.join(format!("{id}{EXTRACTED_SUFFIX}"))).is_ok()
}

/// Removes a build: the marker first (so a half-removed tree never counts as extracted), then
/// the tree, then the archives (the index a retry finds it by).
fn remove_build(
    builds_dir: &Path,
    id: &str,
    archives: &[OsString],
) -> Result<(), (PathBuf, io::Error)> {
    let not_found_ok = |path: PathBuf, result: io::Result<()>| match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err((path, e)),
        _ => Ok(()),
    };
    for suffix in [EXTRACTED_SUFFIX, LEGACY_STAGED_SUFFIX] {
        let marker = builds_dir.join(format!("{id}{suffix}"));
        not_found_ok(marker.clone(), fs::remove_file(&marker))?;
    }
    let tree = builds_dir.join(id);
    not_found_ok(tree.clone(), remove_tree(&tree))?;
    for archive in archives {
        let path = builds_dir.join(archive);
        not_found_ok(path.clone(), fs::remove_file(&path))?;
    }
    Ok(())
}

/// Removes a file, a symlink (not what it points to) or a directory tree. Directories without
/// write permission (an archive may contain some) are made writable first.
fn remove_tree(path: &Path) -> io::Result<()> {
    if !fs::symlink_metadata(path)?.is_dir() {
        return fs::remove_file(path);
    }
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path)?;
            fs::remove_dir_all(path)
        }
        result => result,
    }
}

fn make_dirs_writable(dir: &Path) -> io::Result<()> {
    let mut permissions = fs::metadata(dir)?.permissions();
    permissions.set_mode(permissions.mode() | 0o700);
    fs::set_permissions(dir, permissions)?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_dirs_writable(&entry.path())?;
        }
    }
    Ok(())
}

/// Creates `<parent>/<name>_tmp` → `build_dir` and renames it over `<parent>/<name>`.
fn swap_symlink(build_dir: &Path, parent: &Path, name: &OsStr) -> Result<(), StagingError> {
    fs::create_dir_all(parent).map_err(io_err("create the target's parent", parent))?;
    let tmp = tmp_link_path(parent, name);
    match fs::symlink_metadata(&tmp) {
        Ok(meta) if meta.is_dir() => {
            return Err(StagingError::NotSymlink { path: tmp, kind: kind_of(&meta) });
        }
        Ok(_) => fs::remove_file(&tmp).map_err(io_err("remove the stale", &tmp))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", &tmp)(e)),
    }
    symlink(build_dir, &tmp).map_err(io_err("create the symlink", &tmp))?;
    let target = parent.join(name);
    if let Err(e) = fs::rename(&tmp, &target) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("rename the new symlink over", &target)(e));
    }
    sync_dir(parent)
}

fn tmp_link_path(parent: &Path, name: &OsStr) -> PathBuf {
    let mut tmp = name.to_os_string();
    tmp.push("_tmp");
    parent.join(tmp)
}

/// The target's directory and file name (`/tmp/web/` is `/tmp` and `web`).
fn split_target(target: &Path) -> Result<(PathBuf, &OsStr), StagingError> {
    let invalid = || StagingError::InvalidTarget { path: target.to_path_buf() };
    let name = target.file_name().ok_or_else(invalid)?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        Some(_) => PathBuf::from("."),
        None => return Err(invalid()),
    };
    Ok((parent, name))
}

fn sync_dir(dir: &Path) -> Result<(), StagingError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync", dir))
}

/// Copies a directory tree: files with their permission bits, symlinks as symlinks,
/// directories with their permission bits (set after their content is copied). Other file
/// types (fifos, sockets) are skipped: reading a fifo would block.
fn copy_tree(from: &Path, to: &Path) -> Result<(), StagingError> {
    fs::create_dir(to).map_err(io_err("create", to))?;
    let mut entries: Vec<fs::DirEntry> =
        fs::read_dir(from).and_then(|entries| entries.collect()).map_err(io_err("list", from))?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let (source, dest) = (entry.path(), to.join(entry.file_name()));
        let file_type = entry.file_type().map_err(io_err("inspect", &source))?;
        if file_type.is_dir() {
            copy_tree(&source, &dest)?;
        } else if file_type.is_symlink() {
            let destination =
                fs::read_link(&source).map_err(io_err("read the symlink", &source))?;
            symlink(destination, &dest).map_err(io_err("create the symlink", &dest))?;
        } else if file_type.is_file() {
            fs::copy(&source, &dest).map_err(io_err("copy to the template directory", &source))?;
        } else {
            tracing::warn!(path = %source.display(), "not copied to the templates: not a file");
        }
    }
    let permissions = fs::metadata(from).map_err(io_err("inspect", from))?.permissions();
    fs::set_permissions(to, permissions).map_err(io_err("set the permissions of", to))
}

/// Renders the templates in `<template_root>/<rel>` (recursively) into `<script_root>/<rel>`.
fn render_dir(
    template_root: &Path,
    script_root: &Path,
    rel: &Path,
    vars: &BTreeMap<String, String>,
    rendered: &mut Vec<PathBuf>,
) -> Result<(), StagingError> {
    let dir = template_root.join(rel);
    let mut entries: Vec<fs::DirEntry> =
        fs::read_dir(&dir).and_then(|entries| entries.collect()).map_err(io_err("list", &dir))?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name();
        let source = entry.path();
        if entry.file_type().map_err(io_err("inspect", &source))?.is_dir() {
            render_dir(template_root, script_root, &rel.join(&name), vars, rendered)?;
            continue;
        }
        let Some(stem) = name.as_bytes().strip_suffix(TEMPLATE_SUFFIX.as_bytes()) else {
            continue;
        };
        if stem.is_empty() {
            tracing::warn!(path = %source.display(), "template without a name skipped");
            continue;
        }
        // Follows a symlink, as Teletraan's `os.path.isfile` does; dangling links are skipped.
        let Ok(meta) = fs::metadata(&source) else { continue };
        if !meta.is_file() {
            continue;
        }
        let output = rel.join(OsStr::from_bytes(stem));
        render_file(&source, &script_root.join(&output), meta.permissions().mode(), vars)?;
        rendered.push(output);
    }
    Ok(())
}

/// Renders one template to `dest` through a temporary file renamed into place, so a hook
/// never reads a half-written file and a symlink at `dest` is replaced, not written through.
fn render_file(
    source: &Path,
    dest: &Path,
    mode: u32,
    vars: &BTreeMap<String, String>,
) -> Result<(), StagingError> {
    let bytes = fs::read(source).map_err(io_err("read the template", source))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| StagingError::TemplateNotUtf8 { path: source.to_path_buf() })?;
    let parent = dest.parent().expect("a rendered file is inside the script directory");
    fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(dest.file_name().expect("a rendered file has a name"));
    tmp_name.push(".tt-render");
    let tmp = parent.join(tmp_name);
    fs::write(&tmp, template::render(&text, vars)).map_err(io_err("write", &tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io_err("set the permissions of", &tmp))?;
    if let Err(e) = fs::rename(&tmp, dest) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("replace the rendered file", dest)(e));
    }
    Ok(())
}

/// A name usable as one directory entry: not empty, `.` or `..`, no `/` or NUL.
fn is_path_component(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

fn kind_of(meta: &fs::Metadata) -> &'static str {
    if meta.is_dir() {
        "a directory"
    } else if meta.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

fn build_missing(build_id: &str, path: &Path) -> StagingError {
    StagingError::BuildMissing { build_id: build_id.to_owned(), path: path.to_path_buf() }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StagingError {
    let path = path.to_path_buf();
    move |source| StagingError::Io { action, path, source }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::time::Duration;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn write(path: &Path, content: &str, mode: u32) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    /// An extracted build with a hook template, a nested config template and a plain hook.
    fn extracted_build(builds: &Path, id: &str) -> PathBuf {
        let dir = builds.join(id);
        write(
            &dir.join("teletraan/RESTARTING.tmpl"),
            "#!/bin/sh\nexec app --port ${TELETRAAN_PORT:8080}\n",
            0o755,
        );
        write(
            &dir.join("teletraan/conf/app.conf.tmpl"),
            "build=ID\nname=$TELETRAAN_NAME\n".replace("ID", id).as_str(),
            0o640,
        );
        write(&dir.join("teletraan/POST_RESTART"), "#!/bin/sh\ntrue\n", 0o755);
        write(&dir.join("bin/app"), "app", 0o755);
        dir
    }

    #[test]
    fn stage_creates_the_symlink_and_renders_templates() {
        let root = tempfile::tempdir().unwrap();
        let builds = root.path().join("builds");
        let build_dir = extracted_build(&builds, "B1");
        // The target's parent does not exist yet.
        let target = root.path().join("targets/web");

        let outcome = stage(&builds, "B1", &target, &vars(&[("NAME", "web")])).unwrap();
        assert_eq!(
            outcome,
            StageOutcome {
                previous_build: None,
                switched: true,
                rendered: vec![PathBuf::from("RESTARTING"), PathBuf::from("conf/app.conf")],
            }
        );
        assert_eq!(fs::read_link(&target).unwrap(), build_dir);
        assert_eq!(current_build(&target).as_deref(), Some("B1"));
        assert!(!root.path().join("targets/web_tmp").exists(), "no temp link lingers");

        let hooks = target.join("teletraan");
        assert_eq!(read(&hooks.join("RESTARTING")), "#!/bin/sh\nexec app --port 8080\n");
        assert_eq!(mode(&hooks.join("RESTARTING")), 0o755, "the hook stays executable");
        assert_eq!(read(&hooks.join("conf/app.conf")), "build=B1\nname=web\n");
        assert_eq!(mode(&hooks.join("conf/app.conf")), 0o640);
        assert_eq!(
            read(&hooks.join("RESTARTING.tmpl")),
            read(&build_dir.join("teletraan/RESTARTING.tmpl"))
        );
        let pristine = target.join("teletraan_template");
        assert!(pristine.join("conf/app.conf.tmpl").is_file());
        assert!(!pristine.join("RESTARTING").exists(), "the copy is taken before rendering");
        assert_eq!(mode(&pristine.join("POST_RESTART")), 0o755, "the copy keeps modes");
        assert!(!target.join(PARTIAL_TEMPLATE_DIRNAME).exists());
        let leftovers: Vec<_> = fs::read_dir(&hooks)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tt-render"))
            .collect();
        assert!(leftovers.is_empty(), "no temp render files: {leftovers:?}");
    }

    #[test]
    fn stage_replaces_an_older_build() {
        let root = tempfile::tempdir().unwrap();
        let builds = root.path().join("builds");
        extracted_build(&builds, "B1");
        let new_dir = extracted_build(&builds, "B2");
        let target = root.path().join("web");
        stage(&builds, "B1", &target, &BTreeMap::new()).unwrap();
        // A temp link left by a crash mid-swap is replaced.
        symlink(builds.join("B1"), root.path().join("web_tmp")).unwrap();

        let outcome = stage(&builds, "B2", &target, &vars(&[("PORT", "9090")])).unwrap();
        assert_eq!(outcome.previous_build.as_deref(), Some("B1"));
        assert!(outcome.switched);
        assert_eq!(fs::read_link(&target).unwrap(), new_dir);
        assert!(fs::symlink_metadata(root.path().join("web_tmp")).is_err(), "no temp link lingers");
        assert_eq!(read(&target.join("teletraan/RESTARTING")), "#!/bin/sh\nexec app --port 9090\n");
        assert_eq!(
            read(&target.join("teletraan/conf/app.conf")),
            "build=B2\nname=$TELETRAAN_NAME\n"
        );
        // The old build is untouched (its render from the first staging is still there).
        assert!(builds.join("B1/teletraan/RESTARTING").is_file());
        assert!(builds.join("B1/bin/app").is_file());
    }

    #[test]
    fn staging_the_same_build_again_only_renders_again() {
        let root = tempfile::tempdir().unwrap();
        let builds = root.path().join("builds");
        extracted_build(&builds, "B1");
        let target = root.path().join("web");
        stage(&builds, "B1", &target, &vars(&[("PORT", "1")])).unwrap();
        let link_inode = fs::symlink_metadata(&target).unwrap().ino();

        let outcome = stage(&builds, "B1", &target, &vars(&[("PORT", "2")])).unwrap();
        assert_eq!(outcome.previous_build.as_deref(), Some("B1"));
        assert!(!outcome.switched);
        assert_eq!(fs::symlink_metadata(&target).unwrap().ino(), link_inode, "link not replaced");
        assert_eq!(read(&target.join("teletraan/RESTARTING")), "#!/bin/sh\nexec app --port 2\n");
    }

    #[test]
    fn templates_are_copied_once_and_rendered_from_the_copy() {
        let root = tempfile::tempdir().unwrap();
        let builds = root.path().join("builds");
        extracted_build(&builds, "B1");
        let target = root.path().join("web");
        stage(&builds, "B1", &target, &vars(&[("PORT", "1")])).unwrap();

        // A changed script directory is not copied again: the pristine copy is rendered.
        write(&target.join("teletraan/RESTARTING.tmpl"), "CHANGED $TELETRAAN_PORT\n", 0o755);
        stage(&builds, "B1", &target, &vars(&[("PORT", "2")])).unwrap();
        assert_eq!(read(&target.join("teletraan/RESTARTING")), "#!/bin/sh\nexec app --port 2\n");

        // The copy itself is what renders.
        write(&target.join("teletraan_template/RESTARTING.tmpl"), "port=$TELETRAAN_PORT\n", 0o700);
        stage(&builds, "B1", &target, &vars(&[("PORT", "3")])).unwrap();
        assert_eq!(read(&target.join("teletraan/RESTARTING")), "port=3\n");
        assert_eq!(mode(&target.join("teletraan/RESTARTING")), 0o700);
    }

    #[test]
    fn only_the_file_name_loses_the_suffix() {
        // Teletraan's whole-path `replace(".tmpl", "")` would write `x.d/y` and `plain`.
        let root = tempfile::tempdir().unwrap();
        let builds = root.path().join("builds");
        write(&builds.join("B1/teletraan/x.tmpl.d/y.tmpl"), "${TELETRAAN_A:a}", 0o644);
        write(&builds.join("B1/teletraan/plain.tmpl.bak"), "not a template", 0o644);
        write(&builds.join("B1/teletraan/.tmpl"), "no output name", 0o644);
        let target = root.path().join("web");
        let outcome = stage(&builds, "B1", &target, &BTreeMap::new()).unwrap();
        assert_eq!(outcome.rendered, vec![PathBuf::from("x.tmpl.d/y")]);
        assert_eq!(read(&target.join("teletraan/x.tmpl.d/y")), "a");
        assert!(!target.join("teletraan/x.d").exists());
        assert!(!target.join("teletraan/plain").exists());
    }

    #[test]
    fn a_build_without_hooks_stages_without_rendering() {
        let root = tempfile::tempdir().unwrap();
        let builds = root.path().join("builds");
        write(&builds.join("B1/bin/app"), "app", 0o755);
        let target = root.path().join("web");
        let outcome = stage(&builds, "B1", &target, &vars(&[("PORT", "1")])).unwrap();
        assert!(outcome.switched && outcome.rendered.is_empty());
        assert!(!target.join("teletraan_template").exists());
        assert_eq!(script_dir(&target, "web"), None);
    }

    #[test]
    fn a_template_that_is_not_utf8_fails_staging() {
        let root = tempfile::tempdir().unwrap();
        let builds = root.path().join("builds");
        fs::create_dir_all(builds.join("B1/teletraan")).unwrap();
        fs::write(builds.join("B1/teletraan/bad.tmpl"), b"\xff\xfe").unwrap();
        let err = stage(&builds, "B1", &root.path().join("web"), &BTreeMap::new()).unwrap_err();
        assert!(
            matches!(&err, StagingError::TemplateNotUtf8 { path } if path.ends_with("bad.tmpl")),
            "{err}"
        );
    }

    #[test]
    fn a_real_directory_at_the_target_is_refused_and_kept() {
        let root = tempfile::tempdir().unwrap();
        let builds = root.path().join("builds");
        extracted_build(&builds, "B1");
        let target = root.path().join("web");
        write(&target.join("data.db"), "precious", 0o644);

        let err = stage(&builds, "B1", &target, &BTreeMap::new()).unwrap_err();
        assert!(matches!(&err, StagingError::NotSymlink { kind: "a directory", .. }), "{err}");
        assert!(err.to_string().contains("move it away"), "{err}");
        assert_eq!(read(&target.join("data.db")), "precious");
        assert!(!root.path().join("web_tmp").exists());
        assert_eq!(current_build(&target), None);
    }

    #[test]
    fn missing_builds_and_unsafe_ids_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let builds = root.path().join("builds");
        fs::create_dir_all(&builds).unwrap();
        let target = root.path().join("web");
        let err = stage(&builds, "B9", &target, &BTreeMap::new()).unwrap_err();
        assert!(matches!(err, StagingError::BuildMissing { .. }), "{err}");
        for id in ["", ".", "..", "../builds", "a/b"] {
            let err = stage(&builds, id, &target, &BTreeMap::new()).unwrap_err();
            assert!(matches!(err, StagingError::InvalidBuildId { .. }), "{id:?}: {err}");
        }
        assert!(fs::symlink_metadata(&target).is_err(), "nothing was created");
    }

    #[test]
    fn current_build_reads_only_live_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let builds = root.path().join("builds");
        let target = root.path().join("web");
        assert_eq!(current_build(&target), None, "absent");
        symlink(builds.join("B1"), &target).unwrap();
        assert_eq!(current_build(&target), None, "dangling, as Teletraan");
        fs::create_dir_all(builds.join("B1")).unwrap();
        assert_eq!(current_build(&target).as_deref(), Some("B1"));
        fs::remove_file(&target).unwrap();
        fs::create_dir(&target).unwrap();
        assert_eq!(current_build(&target), None, "a directory is not a staged build");
    }

    #[test]
    fn script_dir_prefers_the_envs_subdirectory() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path();
        assert_eq!(script_dir(target, "web"), None);
        fs::create_dir_all(target.join("teletraan")).unwrap();
        assert_eq!(script_dir(target, "web"), Some(target.join("teletraan")));
        fs::create_dir_all(target.join("teletraan/web")).unwrap();
        write(&target.join("teletraan/api"), "a file, not a directory", 0o755);
        assert_eq!(script_dir(target, "web"), Some(target.join("teletraan/web")));
        assert_eq!(script_dir(target, "api"), Some(target.join("teletraan")));
        assert_eq!(script_dir(target, ".."), Some(target.join("teletraan")));
        assert_eq!(script_dir(target, ""), Some(target.join("teletraan")));
    }

    /// Puts a downloaded and extracted build of `env` in `builds` with archive time `age_s`
    /// seconds after the epoch.
    fn downloaded(builds: &Path, env: &str, id: &str, age_s: u64) {
        let archive = builds.join(format!("{env}-{id}.tar.gz"));
        write(&archive, "archive", 0o644);
        File::options()
            .write(true)
            .open(&archive)
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(age_s))
            .unwrap();
        write(&builds.join(id).join("teletraan/RESTARTING"), "x", 0o755);
        write(&builds.join(format!("{id}.extracted")), "", 0o644);
    }

    fn gone(builds: &Path, env: &str, id: &str) -> bool {
        [
            builds.join(id),
            builds.join(format!("{id}.extracted")),
            builds.join(format!("{env}-{id}.tar.gz")),
        ]
        .iter()
        .all(|p| fs::symlink_metadata(p).is_err())
    }

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cleanup_keeps_the_newest_builds_and_those_in_use() {
        let root = tempfile::tempdir().unwrap();
        let builds = root.path();
        // Creation order differs from age order: ages decide.
        for (id, age) in [("B3", 300), ("B1", 100), ("B5", 500), ("B2", 200), ("B4", 400)] {
            downloaded(builds, "web", id, age);
        }
        downloaded(builds, "api", "A1", 1);
        // Read-only directories inside a build do not stop its removal.
        fs::set_permissions(builds.join("B2/teletraan"), fs::Permissions::from_mode(0o555))
            .unwrap();

        let removed = clean_stale_builds(builds, "web", 2, &set(&["B1"])).unwrap();
        assert_eq!(removed, ["B2", "B3"], "oldest first; B1 is in use");
        for id in ["B2", "B3"] {
            assert!(gone(builds, "web", id), "{id} removed with marker and archive");
        }
        for id in ["B1", "B4", "B5"] {
            assert!(builds.join(id).is_dir() && builds.join(format!("web-{id}.tar.gz")).is_file());
        }
        assert!(builds.join("A1").is_dir(), "another env's build is not this env's to clean");

        assert_eq!(
            clean_stale_builds(builds, "web", 2, &set(&["B1"])).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(clean_stale_builds(builds, "web", 0, &set(&["B4"])).unwrap(), ["B1", "B5"]);
        assert!(builds.join("B4").is_dir());
    }

    #[test]
    fn cleanup_is_not_fooled_by_env_names_with_dashes() {
        let root = tempfile::tempdir().unwrap();
        let builds = root.path();
        // `a-b-Y1.tar.gz` reads as env `a`, build `b-Y1` too; no such build was extracted.
        downloaded(builds, "a", "X1", 100);
        downloaded(builds, "a-b", "Y1", 200);
        downloaded(builds, "a-b", "Y2", 300);
        // A build id of env `a` with a dash (base64url), extracted: it is `a`'s.
        downloaded(builds, "a", "Q-r_1234567", 50);
        // An archive without an extracted tree: unambiguous without a dash, kept with one.
        write(&builds.join("a-Z9.zip"), "orphan", 0o644);
        write(&builds.join("a-b-c-orphan.zip"), "orphan", 0o644);

        let mut removed = clean_stale_builds(builds, "a", 0, &BTreeSet::new()).unwrap();
        removed.sort();
        assert_eq!(removed, ["Q-r_1234567", "X1", "Z9"]);
        assert!(gone(builds, "a", "Q-r_1234567") && gone(builds, "a", "X1"));
        assert!(!builds.join("a-Z9.zip").exists());
        assert!(builds.join("a-b-c-orphan.zip").exists(), "ambiguous without evidence: kept");
        for id in ["Y1", "Y2"] {
            assert!(builds.join(id).is_dir() && builds.join(format!("a-b-{id}.tar.gz")).is_file());
        }
        // Env `a`'s retention does not count `a-b`'s builds; `a-b` cleans its own.
        assert_eq!(clean_stale_builds(builds, "a-b", 1, &BTreeSet::new()).unwrap(), ["Y1"]);
        assert!(builds.join("Y2").is_dir());
        assert!(builds.join("a-b-c-orphan.zip").exists());
    }

    #[test]
    fn cleanup_ignores_what_is_not_an_archive() {
        let root = tempfile::tempdir().unwrap();
        let builds = root.path().join("builds");
        assert_eq!(
            clean_stale_builds(&builds, "web", 0, &BTreeSet::new()).unwrap(),
            Vec::<String>::new()
        );
        fs::create_dir_all(&builds).unwrap();
        // An empty id would name the builds directory itself.
        write(&builds.join("web-.tar.gz"), "x", 0o644);
        write(&builds.join("web-noext"), "x", 0o644);
        write(&builds.join("B7/keep"), "x", 0o644);
        fs::create_dir(builds.join("web-B7.d")).unwrap();
        symlink(builds.join("B7/keep"), builds.join("web-B7.tar.gz")).unwrap();
        assert_eq!(
            clean_stale_builds(&builds, "web", 0, &BTreeSet::new()).unwrap(),
            Vec::<String>::new()
        );
        assert!(builds.join("web-.tar.gz").is_file() && builds.join("B7/keep").is_file());
        assert!(builds.join("web-B7.d").is_dir() && builds.join("web-noext").is_file());
        for env in ["", "a/b"] {
            let err = clean_stale_builds(&builds, env, 0, &BTreeSet::new()).unwrap_err();
            assert!(matches!(err, CleanupError::InvalidEnvName { .. }), "{err}");
        }
    }

    #[test]
    fn archive_names_parse_like_teletraan() {
        assert_eq!(archive_build_id("web-B1.tar.gz", "web"), Some("B1"));
        assert_eq!(archive_build_id("web-r4T-Z_8ef9007.zip", "web"), Some("r4T-Z_8ef9007"));
        assert_eq!(archive_build_id("a-b-X.tar.gz", "a"), Some("b-X"));
        assert_eq!(archive_build_id("webx-B1.tar.gz", "web"), None);
        assert_eq!(archive_build_id("web-B1", "web"), None);
        assert_eq!(archive_build_id("web-.tar", "web"), None);
        assert_eq!(archive_build_id("B1.extracted", "web"), None);
    }

    #[test]
    fn remove_env_removes_only_our_symlink() {
        let root = tempfile::tempdir().unwrap();
        let builds = root.path().join("builds");
        extracted_build(&builds, "B1");
        let target = root.path().join("web");
        assert_eq!(remove_env(&target, &builds).unwrap(), TargetRemoval::Absent);
        let never_staged = root.path().join("no/such/dir/web");
        assert_eq!(remove_env(&never_staged, &builds).unwrap(), TargetRemoval::Absent);

        stage(&builds, "B1", &target, &BTreeMap::new()).unwrap();
        symlink(builds.join("B1"), root.path().join("web_tmp")).unwrap();
        assert_eq!(
            remove_env(&target, &builds).unwrap(),
            TargetRemoval::Removed { build_id: "B1".into() }
        );
        assert!(fs::symlink_metadata(&target).is_err());
        assert!(fs::symlink_metadata(root.path().join("web_tmp")).is_err());
        assert!(builds.join("B1/teletraan/RESTARTING").is_file(), "the build is left to cleanup");

        let elsewhere = root.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        symlink(&elsewhere, &target).unwrap();
        assert_eq!(remove_env(&target, &builds).unwrap(), TargetRemoval::LeftAlone);
        assert!(fs::symlink_metadata(&target).unwrap().file_type().is_symlink());
        fs::remove_file(&target).unwrap();
        fs::create_dir(&target).unwrap();
        assert_eq!(remove_env(&target, &builds).unwrap(), TargetRemoval::LeftAlone);
        assert!(target.is_dir());
    }
}
