//! Jackson-compatible null handling that stays compatible with postcard.
//!
//! Teletraan emits and accepts `null` for every unset field. For fields we model as a plain
//! collection or enum (where `null` and "empty" mean the same thing) JSON input may still carry
//! `null`; postcard, which is not self-describing, carries the value itself.

use serde::{Deserialize, Deserializer};

/// Deserializes `null` as `T::default()` in human-readable formats (JSON). Combine with
/// `#[serde(default)]` so that an absent field is accepted too.
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    if deserializer.is_human_readable() {
        Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
    } else {
        T::deserialize(deserializer)
    }
}
