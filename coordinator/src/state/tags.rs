//! Tags (Teletraan's `tags`, §1.14): BUILD tags (BAD_BUILD, GOOD_BUILD, CERTIFIED_BUILD) and
//! the effective tag of a build, which propagates along its branch.
//!
//! A BUILD tag is created on a build id; `apply` rewrites its `targetId` to the build's name
//! and keeps the build's JSON in `metaInfo` (Teletraan's `BuildTagHandler`), so the tag
//! outlives the build. The effective tag of build B (`BuildTagsManagerImpl`): among the tags on
//! builds of B's name whose commit date is not after B's, newest commit date first, the first
//! that is on B's exact commit or on a build of the same SCM and branch. So BAD_BUILD on commit
//! X marks every later build of that branch bad until a newer tag (e.g. GOOD_BUILD) appears.

use std::collections::BTreeSet;

use proto::beans::{BuildBean, TagBean};
use proto::command::{OpError, OpOutput, OpResult};
use proto::enums::{TagTargetType, TagValue};
use proto::ids::{BuildId, TagId};

use super::{Key, State};

/// Longest tag comment, in characters.
pub const MAX_TAG_COMMENT_CHARS: usize = 1024;

/// Where a BUILD tag sits in its name's order: tagged build's commit date, then the tag's
/// creation time and id (so of two tags on one build the newer wins; Teletraan's order between
/// them was arbitrary).
pub(super) type TagOrder = (i64, i64, TagId);

/// The build a BUILD tag was placed on, from its `metaInfo`.
pub(super) fn tagged_build(tag: &TagBean) -> Option<BuildBean> {
    if tag.target_type != Some(TagTargetType::Build) {
        return None;
    }
    serde_json::from_str(tag.meta_info.as_deref()?).ok()
}

fn tag_order(tag: &TagBean, build: &BuildBean) -> Option<(String, TagOrder)> {
    Some((
        tag.target_id.clone()?,
        (build.commit_date.unwrap_or(0), tag.created_date.unwrap_or(0), tag.id.clone()?),
    ))
}

impl State {
    pub(super) fn create_tag(&mut self, now: i64, mut tag: TagBean) -> OpResult {
        let id = tag
            .id
            .clone()
            .ok_or_else(|| OpError::Invalid { reason: "a new tag needs an id".into() })?;
        if self.tags.contains_key(&id) {
            return Err(OpError::Conflict { reason: format!("tag {id} already exists") });
        }
        let value =
            tag.value.ok_or_else(|| OpError::Invalid { reason: "value is required".into() })?;
        let target_type = *tag.target_type.get_or_insert(TagTargetType::Build);
        let target = tag
            .target_id
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| OpError::Invalid { reason: "targetId is required".into() })?;
        let build_value =
            matches!(value, TagValue::BadBuild | TagValue::GoodBuild | TagValue::CertifiedBuild);
        if build_value != (target_type == TagTargetType::Build) {
            return Err(OpError::Invalid {
                reason: format!(
                    "value {value} does not fit targetType {target_type} (BUILD takes BAD_BUILD, GOOD_BUILD or CERTIFIED_BUILD; ENVIRONMENT and TELETRAAN take ENABLE_ENV or DISABLE_ENV)"
                ),
            });
        }
        if tag.comments.as_ref().is_some_and(|c| c.chars().count() > MAX_TAG_COMMENT_CHARS) {
            return Err(OpError::Invalid {
                reason: format!("comments are longer than {MAX_TAG_COMMENT_CHARS} characters"),
            });
        }
        tag.created_date = Some(now);
        let mut build = None;
        if target_type == TagTargetType::Build {
            let b = self
                .builds
                .get(&BuildId::new(target.clone()))
                .ok_or_else(|| OpError::NotFound { what: format!("build {target}") })?;
            tag.target_id = b.name.clone();
            tag.meta_info = Some(serde_json::to_string(b).expect("beans serialize"));
            build = Some(b.clone());
        } else {
            tag.meta_info = None;
        }
        if let Some(b) = build {
            self.index_tag(&tag, b);
        }
        self.tags.insert(id.clone(), tag.clone());
        self.dirty.insert(Key::Tag(id));
        Ok(OpOutput::Tag(tag))
    }

    pub(super) fn delete_tag(&mut self, id: &TagId) -> OpResult {
        let tag =
            self.tags.remove(id).ok_or_else(|| OpError::NotFound { what: format!("tag {id}") })?;
        self.tagged_builds.remove(id);
        if let Some(b) = tagged_build(&tag)
            && let Some((name, order)) = tag_order(&tag, &b)
            && let Some(set) = self.build_tags.get_mut(&name)
        {
            set.remove(&order);
            if set.is_empty() {
                self.build_tags.remove(&name);
            }
        }
        self.dirty.insert(Key::Tag(id.clone()));
        Ok(OpOutput::Done)
    }

    /// Adds a BUILD tag to the effective-tag index.
    pub(super) fn index_tag(&mut self, tag: &TagBean, build: BuildBean) {
        if let Some((name, order)) = tag_order(tag, &build) {
            self.build_tags.entry(name).or_default().insert(order);
            self.tagged_builds.insert(tag.id.clone().expect("indexed tags have ids"), build);
        }
    }

    pub fn tag(&self, id: &TagId) -> Option<&TagBean> {
        self.tags.get(id)
    }

    /// Tags whose target is `target` (a build name, a stage id, ...) or that were placed on
    /// the build with id `target`, newest first.
    pub fn tags_of_target(&self, target: &str) -> Vec<&TagBean> {
        let mut out: Vec<&TagBean> = self
            .tags
            .iter()
            .filter(|(id, t)| {
                t.target_id.as_deref() == Some(target)
                    || self
                        .tagged_builds
                        .get(*id)
                        .is_some_and(|b| b.id.as_ref().map(BuildId::as_str) == Some(target))
            })
            .map(|(_, t)| t)
            .collect();
        out.sort_by(|a, b| b.created_date.cmp(&a.created_date).then(b.id.cmp(&a.id)));
        out
    }

    /// Tags with this value, newest first.
    pub fn tags_with_value(&self, value: TagValue) -> Vec<&TagBean> {
        let mut out: Vec<&TagBean> =
            self.tags.values().filter(|t| t.value == Some(value)).collect();
        out.sort_by(|a, b| b.created_date.cmp(&a.created_date).then(b.id.cmp(&a.id)));
        out
    }

    /// The tag that applies to `build` (see the module docs), if any.
    pub fn effective_tag(&self, build: &BuildBean) -> Option<&TagBean> {
        let set: &BTreeSet<TagOrder> = self.build_tags.get(build.name.as_deref()?)?;
        let commit_date = build.commit_date.unwrap_or(0);
        set.iter().rev().filter(|(date, _, _)| *date <= commit_date).find_map(|(_, _, id)| {
            let tagged = self.tagged_builds.get(id)?;
            let applies = tagged.commit == build.commit
                || (tagged.scm == build.scm && tagged.branch == build.branch);
            applies.then(|| self.tags.get(id)).flatten()
        })
    }

    /// The BAD_BUILD tag in effect for a build, if it is bad.
    pub fn bad_build_tag(&self, id: &BuildId) -> Option<&TagBean> {
        self.effective_tag(self.builds.get(id)?).filter(|t| t.value == Some(TagValue::BadBuild))
    }
}
