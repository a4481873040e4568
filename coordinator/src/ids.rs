//! Leader-side id generation. Ids are chosen before proposing, so `apply` stays deterministic.

/// Generates Teletraan-shaped ids (22-character URL-safe base64 of 128 random bits).
#[derive(Debug, Default)]
pub struct IdGen;

impl IdGen {
    pub fn uuid_bytes(&self) -> [u8; 16] {
        rand::random::<u128>().to_be_bytes()
    }

    /// A fresh 22-character id.
    pub fn next(&self) -> String {
        proto::ids::base64_uuid(self.uuid_bytes())
    }
}
